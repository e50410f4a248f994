"""LPIPS, the learned perceptual distance (Zhang et al. 2018, CVPR), as CPDM reports it.

Zhang R, Isola P, Efros AA, Shechtman E, Wang O (2018). The unreasonable effectiveness of deep
features as a perceptual metric. CVPR, 586-595. Version 0.1 of the ``lpips`` package.

The network: an ImageNet VGG16 or AlexNet trunk (torchvision's ``features`` layer layout, rebuilt
here in plain torch so torchvision-format state dicts load), features tapped after five ReLUs,
each unit-normalised over channels, squared differences weighted by learned 1x1 convolutions
(the "linear heads"), averaged over space and summed over the five layers.

Weights are never shipped nor downloaded: the ImageNet trunk weights carry the ImageNet terms of
use and this package fetches nothing. They are read only from files the user supplies, located
by :func:`find_weights`:

- the trunk: torchvision's checkpoint (``vgg16-397923af.pth`` or ``alexnet-owt-7be5be79.pth``,
  or a ``.safetensors`` file with the same keys), from an explicit path or torch hub's cache,
  ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``);
- the heads: the ``lpips`` package's ``weights/v0.1/vgg.pth`` / ``alex.pth`` (or ``.safetensors``),
  from an explicit path, the same cache folder, or an installed ``lpips`` package.

``.pth`` files are read with ``torch.load(..., weights_only=True)`` (tensors only, never arbitrary
pickles), ``.safetensors`` with safetensors.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "BACKBONE_FILENAMES",
    "HEAD_FILENAMES",
    "LPIPS",
    "LPIPSUnavailable",
    "LPIPSWeights",
    "find_weights",
    "lpips",
    "lpips_available",
]

#: torchvision's ImageNet checkpoints, under the names torch hub caches them.
BACKBONE_FILENAMES: dict[str, str] = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth"}
#: The lpips package's v0.1 linear heads (``lpips/weights/v0.1/<net>.pth``).
HEAD_FILENAMES: dict[str, str] = {"vgg": "vgg.pth", "alex": "alex.pth"}

#: lpips v0.1 ``ScalingLayer``: inputs in [-1, 1] are shifted and scaled to ImageNet statistics.
LPIPS_SHIFT: tuple[float, float, float] = (-0.030, -0.088, -0.188)
LPIPS_SCALE: tuple[float, float, float] = (0.458, 0.448, 0.450)
#: lpips ``normalize_tensor``: x / (||x||_2 over channels + eps).
LPIPS_NORM_EPS: float = 1e-10

# torchvision ``features`` layouts. Conv entries: (out_channels, kernel, stride, padding); "M": max
# pooling (VGG: 2x2 stride 2; AlexNet: 3x3 stride 2). Every conv is followed by a ReLU, so indices
# match torchvision's Sequential. TAPS: indices of the ReLUs whose outputs LPIPS compares.
_VGG16_LAYOUT = [(64, 3, 1, 1), (64, 3, 1, 1), "M", (128, 3, 1, 1), (128, 3, 1, 1), "M",
                 (256, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1), "M",
                 (512, 3, 1, 1), (512, 3, 1, 1), (512, 3, 1, 1), "M",
                 (512, 3, 1, 1), (512, 3, 1, 1), (512, 3, 1, 1), "M"]  # fmt: skip
_ALEXNET_LAYOUT = [(64, 11, 4, 2), "M", (192, 5, 1, 2), "M", (384, 3, 1, 1), (256, 3, 1, 1),
                   (256, 3, 1, 1), "M"]  # fmt: skip
_NETS = {
    # name: (layout, pooling kernel, tapped ReLU indices (relu1_2..relu5_3 / relu1..relu5), min side)
    "vgg": (_VGG16_LAYOUT, 2, (3, 8, 15, 22, 29), 16),
    "alex": (_ALEXNET_LAYOUT, 3, (1, 4, 7, 9, 11), 31),
}


class LPIPSUnavailable(RuntimeError):
    """The weight files LPIPS needs were not found (they cannot be shipped or downloaded)."""


def _features(layout: list, pool_kernel: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for item in layout:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=pool_kernel, stride=2))
        else:
            out, k, stride, pad = item
            layers += [nn.Conv2d(channels, out, k, stride=stride, padding=pad), nn.ReLU(inplace=False)]
            channels = out
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------------------------------
# weight files


@dataclass(frozen=True)
class LPIPSWeights:
    """Where the weights were found (None: not found) and every place that was looked at."""

    backbone: Path | None
    head: Path | None
    backbone_candidates: tuple[Path, ...]
    head_candidates: tuple[Path, ...]


def _hub_checkpoints() -> Path:
    # torch.hub.get_dir() honours $TORCH_HOME, then $XDG_CACHE_HOME/torch, else ~/.cache/torch.
    return Path(torch.hub.get_dir()) / "checkpoints"


def _lpips_package_dir() -> Path | None:
    spec = importlib.util.find_spec("lpips")  # locates an installed package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "weights" / "v0.1"


def _with_safetensors(path: Path) -> list[Path]:
    return [path, path.with_suffix(".safetensors")]


def _check_net(net: str) -> None:
    if net not in _NETS:
        raise ValueError(f"unknown LPIPS network {net!r}; use one of {sorted(_NETS)}")


def find_weights(
    net: str = "alex", *, backbone_path: str | Path | None = None, head_path: str | Path | None = None
) -> LPIPSWeights:
    """Locate the trunk and head files for ``net`` ("alex" or "vgg"); reads nothing.

    An explicit path is the only candidate for its file. Otherwise the trunk is looked for in the
    torch hub cache, and the heads there and in an installed ``lpips`` package.
    """
    _check_net(net)
    hub = _hub_checkpoints()
    if backbone_path is not None:
        backbones = [Path(backbone_path)]
    else:
        backbones = _with_safetensors(hub / BACKBONE_FILENAMES[net])
    if head_path is not None:
        heads = [Path(head_path)]
    else:
        heads = _with_safetensors(hub / HEAD_FILENAMES[net])
        package = _lpips_package_dir()
        if package is not None:
            heads += _with_safetensors(package / HEAD_FILENAMES[net])
    found = lambda paths: next((p for p in paths if p.is_file()), None)  # noqa: E731
    return LPIPSWeights(found(backbones), found(heads), tuple(backbones), tuple(heads))


def lpips_available(
    net: str = "alex", *, backbone_path: str | Path | None = None, head_path: str | Path | None = None
) -> bool:
    """True when both weight files for ``net`` are found (see :func:`find_weights`)."""
    w = find_weights(net, backbone_path=backbone_path, head_path=head_path)
    return w.backbone is not None and w.head is not None


def _unavailable_message(net: str, w: LPIPSWeights) -> str:
    lines = [f"LPIPS ({net}) is unavailable: its weight files were not found."]
    if w.backbone is None:
        looked = ", ".join(map(str, w.backbone_candidates))
        lines.append(f"  ImageNet trunk (torchvision format), looked for: {looked}")
    if w.head is None:
        lines.append("  LPIPS v0.1 linear heads, looked for: " + ", ".join(map(str, w.head_candidates)))
    lines.append(
        "petsynth cannot ship the ImageNet-trained weights and never downloads anything. Place "
        f"torchvision's {BACKBONE_FILENAMES[net]} and the lpips package's weights/v0.1/{HEAD_FILENAMES[net]} "
        "in $TORCH_HOME/hub/checkpoints (default ~/.cache/torch/hub/checkpoints), or pass "
        "backbone_path= and head_path=."
    )
    return "\n".join(lines)


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors from a .safetensors file, or from a .pth file without unpickling arbitrary objects."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, or a pickle that is more than tensors
        raise ValueError(
            f"cannot read LPIPS weights from {path} (tensors only, weights_only=True): {exc}"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return state


_HEAD_KEY = re.compile(r"^lins?\.?(\d+)\.model\.\d+\.weight$")  # lin0.model.1.weight / lins.0.model.1.weight


# ----------------------------------------------------------------------------------------------------
# network


class LPIPS(nn.Module):
    """LPIPS network; ``forward(x0, x1)`` takes (B, 3, H, W) images in [-1, 1] and returns (B,).

    ``LPIPS(net)`` loads the trunk and heads from user-supplied files (see the module docstring)
    and raises :class:`LPIPSUnavailable` when they are missing. ``pretrained=False`` builds the
    network with random weights and reads nothing: for tests and for training new heads only.
    Parameters are frozen and the module is in eval mode.
    """

    def __init__(
        self,
        net: str = "alex",
        *,
        backbone_path: str | Path | None = None,
        head_path: str | Path | None = None,
        pretrained: bool = True,
    ) -> None:
        super().__init__()
        _check_net(net)
        layout, pool_kernel, taps, min_size = _NETS[net]
        self.net, self.taps, self.min_size = net, taps, min_size
        self.features = _features(layout, pool_kernel)  # same indices as torchvision's .features
        channels = [self.features[i - 1].out_channels for i in taps]
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in channels)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        if pretrained:
            w = find_weights(net, backbone_path=backbone_path, head_path=head_path)
            if w.backbone is None or w.head is None:
                raise LPIPSUnavailable(_unavailable_message(net, w))
            self.load_backbone(w.backbone)
            self.load_heads(w.head)
        self.requires_grad_(False)
        self.eval()

    def load_backbone(self, path: str | Path) -> None:
        """Load a torchvision-format trunk (keys ``features.<i>.weight/bias``; others ignored)."""
        state = _read_state_dict(Path(path))
        feats = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        try:
            self.features.load_state_dict(feats, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{path} is not a torchvision {self.net} checkpoint: {exc}") from exc

    def load_heads(self, path: str | Path) -> None:
        """Load lpips-format linear heads (keys ``lin<k>.model.1.weight``, shape (1, C, 1, 1))."""
        state = _read_state_dict(Path(path))
        heads = {int(m.group(1)): v for k, v in state.items() if (m := _HEAD_KEY.match(k))}
        if sorted(heads) != list(range(len(self.heads))):
            raise ValueError(f"{path} lacks LPIPS heads lin0..lin{len(self.heads) - 1}; keys: {sorted(state)}")
        for k, head in enumerate(self.heads):
            if heads[k].shape != head.weight.shape:
                raise ValueError(
                    f"{path}: head lin{k} has shape {tuple(heads[k].shape)}, "
                    f"expected {tuple(head.weight.shape)}"
                )
            with torch.no_grad():
                head.weight.copy_(heads[k])

    def _taps(self, x: Tensor) -> list[Tensor]:
        out = []
        for i, layer in enumerate(self.features[: self.taps[-1] + 1]):
            x = layer(x)
            if i in self.taps:
                out.append(x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + LPIPS_NORM_EPS))
        return out

    def forward(self, x0: Tensor, x1: Tensor) -> Tensor:
        if x0.shape != x1.shape or x0.ndim != 4 or x0.shape[1] != 3:
            raise ValueError(f"expected two (B, 3, H, W) tensors, got {tuple(x0.shape)} and {tuple(x1.shape)}")
        if min(x0.shape[-2:]) < self.min_size:
            size = self.min_size
            raise ValueError(f"LPIPS ({self.net}) needs images of at least {size}x{size} pixels")
        f0 = self._taps((x0 - self.shift) / self.scale)
        f1 = self._taps((x1 - self.shift) / self.scale)
        return sum(head((a - b) ** 2).mean(dim=(1, 2, 3)) for head, a, b in zip(self.heads, f0, f1))


@lru_cache(maxsize=4)
def _cached(net: str, backbone: Path, head: Path, device: str, stamp: tuple) -> LPIPS:
    return LPIPS(net, backbone_path=backbone, head_path=head).to(device)


def lpips(
    pred: Tensor,
    target: Tensor,
    *,
    data_range: float,
    net: str = "alex",
    backbone_path: str | Path | None = None,
    head_path: str | Path | None = None,
) -> Tensor:
    """LPIPS distance per image, (B,) float64, for single-channel (B, 1, H, W) images.

    Images are mapped to [-1, 1] as ``2 * x / data_range - 1`` (so they are assumed to lie in
    [0, data_range]; values outside are not clipped) and repeated to 3 channels. Lower is more
    similar; 0 for identical images. Raises :class:`LPIPSUnavailable` without the weight files.
    The loaded network is cached per (net, files, device).
    """
    if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 1:
        raise ValueError(
            f"LPIPS: expected pred and target of the same (B, 1, H, W) shape, got {tuple(pred.shape)} "
            f"and {tuple(target.shape)}"
        )
    if not (float(data_range) > 0 and float(data_range) < float("inf")):
        raise ValueError(f"data_range must be positive and finite, got {data_range}")
    w = find_weights(net, backbone_path=backbone_path, head_path=head_path)
    if w.backbone is None or w.head is None:
        raise LPIPSUnavailable(_unavailable_message(net, w))
    stamp = tuple(p.stat().st_mtime_ns for p in (w.backbone, w.head))  # reload when a file changes
    model = _cached(net, w.backbone.resolve(), w.head.resolve(), str(pred.device), stamp)
    to_unit = lambda x: (2 * x.float() / float(data_range) - 1).expand(-1, 3, -1, -1)  # noqa: E731
    with torch.no_grad():
        return model(to_unit(pred), to_unit(target)).to(torch.float64)
