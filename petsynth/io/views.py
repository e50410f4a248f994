"""What a PET reader looks at first: maximum-intensity projections and fused CT/PET slices, as arrays and PNGs.

Volumes follow the petsynth convention ``volume[k, j, i]`` (slice, row, column) on a
:class:`~petsynth.data.geometry.Geometry` (LPS, mm). Views are oriented as a radiologist expects: a coronal
view has the patient's head at the top and the patient's right on the viewer's left; a sagittal view has the
head at the top and anterior on the left; pixels are resampled to square so that anatomy keeps its shape.

- :func:`mip`: the maximum along one patient axis (coronal: anterior-posterior).
- :func:`rotating_mip`: MIPs of the volume turned about the patient's long axis (frames of an animation).
- :func:`plane`: one slice of the volume in the axial, coronal or sagittal plane.
- :func:`fuse`: an RGB image of a PET over a grey CT (or MR), the PET in a hot colour map whose opacity
  grows with the SUV.
- :func:`save_mip_png`, :func:`save_fused_png`: the same as PNGs with a legend in SUV (matplotlib).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from petsynth.data.geometry import Geometry
from petsynth.utils.files import atomic_file

PLANES = ("axial", "coronal", "sagittal")
#: CT display windows (level, width) in HU.
CT_WINDOWS = {"soft tissue": (40.0, 400.0), "lung": (-600.0, 1500.0), "bone": (400.0, 1800.0)}
#: Upper end of the PET display scale, SUV (the usual FDG reading scale).
PET_DISPLAY_MAX = 8.0
#: Colour map of PET in fused views and MIPs over a dark background.
PET_CMAP = "hot"


def _display_axes(geometry: Geometry) -> tuple[tuple[int, int, int], tuple[int, ...]]:
    """The axes of ``volume[k, j, i]`` that run along the patient's S, P and L axes (each grid axis goes to the
    patient axis it is closest to), and which of them to flip for :func:`canonical`."""
    d = geometry.direction_matrix  # d[world axis L, P, S; grid axis i, j, k]
    grid_of_world = np.argmax(np.abs(d), axis=1)  # the grid axis closest to each of L, P, S
    if len(set(grid_of_world.tolist())) != 3:
        raise ValueError("the volume's axes are too oblique to tell the patient's planes apart")
    ax_l, ax_p, ax_s = (2 - int(g) for g in grid_of_world)  # as axes of volume[k, j, i]
    wanted = {2: -1.0, 1: 1.0, 0: 1.0}  # S axis toward inferior, P toward posterior, L toward the patient's left
    flips = tuple(n for n, world in enumerate((2, 1, 0))
                  if np.sign(d[world, grid_of_world[world]]) != wanted[world])
    return (ax_s, ax_p, ax_l), flips


def canonical(volume: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``volume`` reordered to the display convention (a view, not a copy): axis 0 runs from the patient's head
    to the feet (superior -> inferior), axis 1 from front to back (anterior -> posterior), axis 2 from the
    patient's right to left; and the spacing (mm) along each. Every plane is then a plain index: axial
    ``c[s]`` (anterior at the top, the patient's right on the viewer's left), coronal ``c[:, a]`` (head at the
    top), sagittal ``c[:, :, r]`` (head at the top, anterior on the left). Oblique grids are shown as if
    aligned with the patient axes they are closest to."""
    axes, flips = _display_axes(geometry)
    out = np.transpose(np.asarray(volume), axes)
    if flips:
        out = np.flip(out, axis=flips)
    return out, tuple(float(geometry.spacing[a]) for a in axes)


def _view(volume: np.ndarray, geometry: Geometry, plane: str, index: int | None) -> tuple[np.ndarray, float]:
    """The 2-D view (rows top to bottom, columns left to right as displayed; a MIP when ``index`` is None)
    and its pixel aspect (row spacing / column spacing)."""
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {PLANES}, got {plane!r}")
    c, (s_si, s_ap, s_rl) = canonical(volume, geometry)
    through = PLANES.index(plane)
    if index is None:
        view = c.max(axis=through)
    else:
        if not 0 <= index < c.shape[through]:
            raise ValueError(f"{plane} slice {index} is outside 0..{c.shape[through] - 1}")
        view = np.take(c, index, axis=through)
    aspect = {"axial": s_ap / s_rl, "coronal": s_si / s_rl, "sagittal": s_si / s_ap}[plane]
    return np.ascontiguousarray(view), aspect


def plane_size(geometry: Geometry, plane: str) -> int:
    """How many slices the volume has in ``plane``."""
    axes, _ = _display_axes(geometry)
    return int(geometry.shape[axes[PLANES.index(plane)]])


def display_index(geometry: Geometry, plane: str, index: int) -> int:
    """The :func:`plane` index of the slice that is ``index`` along the volume's own axis through ``plane``
    (e.g. slice k of an axial series: counted from the head in the display order)."""
    axes, flips = _display_axes(geometry)
    n = PLANES.index(plane)
    return int(geometry.shape[axes[n]] - 1 - index) if n in flips else int(index)


def plane(volume: np.ndarray, geometry: Geometry, plane: str, index: int) -> tuple[np.ndarray, float]:
    """Slice ``index`` of ``volume`` in ``plane``, counted in the display convention of :func:`canonical`
    (axial 0 is the most superior slice, coronal 0 the most anterior, sagittal 0 the patient's rightmost),
    oriented for display, and its pixel aspect (row / column spacing)."""
    return _view(volume, geometry, plane, index)


def mip(volume: np.ndarray, geometry: Geometry, plane: str = "coronal") -> tuple[np.ndarray, float]:
    """Maximum-intensity projection through ``plane`` (coronal: along anterior-posterior), oriented for display,
    and its pixel aspect (row / column spacing)."""
    return _view(volume, geometry, plane, None)


def crop_to(mask: np.ndarray, geometry: Geometry, volumes: Sequence[np.ndarray], margin: int = 3
            ) -> tuple[list[np.ndarray], Geometry]:
    """``volumes`` (all on ``geometry``) cut to the box around ``mask`` (e.g. the body), ``margin`` voxels
    wider in-plane, every slice kept; and the box's geometry. An empty mask keeps everything."""
    if not mask.any():
        return list(volumes), geometry
    nz, ny, nx = geometry.shape
    _, js, is_ = np.nonzero(mask)
    j0, j1 = max(int(js.min()) - margin, 0), min(int(js.max()) + margin + 1, ny)
    i0, i1 = max(int(is_.min()) - margin, 0), min(int(is_.max()) + margin + 1, nx)
    origin = geometry.index_to_world(np.array([[i0, j0, 0]], dtype=float))[0]
    box = Geometry(shape=(nz, j1 - j0, i1 - i0), spacing=geometry.spacing, origin=tuple(float(v) for v in origin),
                   direction=geometry.direction)
    return [np.ascontiguousarray(v[:, j0:j1, i0:i1]) for v in volumes], box


def square_pixels(view: np.ndarray, aspect: float, order: int = 1) -> np.ndarray:
    """``view`` stretched along its rows so that its pixels are square (``aspect`` = row / column spacing)."""
    if abs(aspect - 1.0) < 1e-3:
        return view
    from scipy import ndimage

    return ndimage.zoom(view, (aspect, 1.0), order=order, prefilter=False)


def rotating_mip(volume: np.ndarray, geometry: Geometry, frames: int = 24) -> list[np.ndarray]:
    """Coronal MIPs of ``volume`` turned about the patient's long axis by 360 / ``frames`` degrees each (frame 0
    is :func:`mip`), with square pixels: the frames of a rotating MIP."""
    from scipy import ndimage

    c, (s_si, _, s_rl) = canonical(volume, geometry)
    c = np.ascontiguousarray(c, dtype=np.float32)
    out = []
    for n in range(frames):
        turned = c if n == 0 else ndimage.rotate(c, 360.0 * n / frames, axes=(1, 2), reshape=False, order=1,
                                                  mode="constant", cval=0.0, prefilter=False)
        out.append(square_pixels(turned.max(axis=1), s_si / s_rl))
    return out


def window(image: np.ndarray, level: float, width: float) -> np.ndarray:
    """``image`` mapped to 0..1 through a display window (values below / above saturate)."""
    return np.clip((np.asarray(image, dtype=np.float32) - (level - width / 2)) / width, 0.0, 1.0)


def fuse(anatomy: np.ndarray, pet: np.ndarray, *, anatomy_window: tuple[float, float] = CT_WINDOWS["soft tissue"],
         pet_max: float = PET_DISPLAY_MAX, opacity: float = 0.7) -> np.ndarray:
    """(H, W, 3) float RGB in 0..1: the ``anatomy`` slice in grey through ``anatomy_window`` (level, width),
    under the ``pet`` slice (SUV, same grid) in the hot colour map over 0..``pet_max``, whose opacity rises
    from 0 at SUV 0 to ``opacity`` at ``pet_max`` (so air and background stay the anatomy's)."""
    from matplotlib import colormaps

    grey = window(anatomy, *anatomy_window)[..., None].repeat(3, axis=-1)
    level = np.clip(np.asarray(pet, dtype=np.float32) / pet_max, 0.0, 1.0)
    colour = colormaps[PET_CMAP](level)[..., :3]
    alpha = (opacity * np.sqrt(level))[..., None]
    return grey * (1 - alpha) + colour * alpha


def _figure(n_panels: int, height_per_width: float, width: float = 3.6):
    """One row of ``n_panels`` axes of ``width`` inches, as tall as the images' aspect asks (within reason)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height = float(np.clip(width * height_per_width, 2.0, 9.0)) + 0.8  # + title and captions
    return plt.subplots(1, n_panels, figsize=(width * n_panels + 1.0, height), squeeze=False, layout="constrained")


def _save(fig, target, title: str, dpi: int):
    """Save ``fig`` as PNG to a path (atomically, folders created) or a binary file object; returns ``target``."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title, fontsize=11)
    try:
        if isinstance(target, str | Path):
            target = Path(target)
            with atomic_file(target) as fh:
                fig.savefig(fh, dpi=dpi, format="png")
        else:
            fig.savefig(target, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return target


def save_mip_png(path, volumes: Sequence[tuple[np.ndarray, str]], geometry: Geometry, *,
                 pet_max: float = PET_DISPLAY_MAX, title: str = "", dpi: int = 100) -> Path:
    """Coronal MIPs of PET volumes (SUV, all on ``geometry``) side by side, inverted grey over 0..``pet_max``
    with a shared SUV colour bar; ``volumes`` are (volume, caption). ``path``: a file path or a binary file
    object (PNG)."""
    views_ = [mip(volume, geometry) for volume, _ in volumes]
    height_per_width = max(v.shape[0] * a / v.shape[1] for v, a in views_)  # displayed, in mm / mm
    fig, axes = _figure(len(volumes), height_per_width)
    image = None
    for ax, (view, aspect), (_, caption) in zip(axes[0], views_, volumes):
        image = ax.imshow(view, cmap="gray_r", vmin=0.0, vmax=pet_max, aspect=aspect, interpolation="antialiased")
        ax.set_title(caption, fontsize=10)
        ax.axis("off")
    bar = fig.colorbar(image, ax=list(axes[0]), fraction=0.03, pad=0.02)
    bar.set_label("SUV (g/ml)")
    return _save(fig, path, title, dpi)


def save_fused_png(path, anatomy: np.ndarray, pets: Sequence[tuple[np.ndarray, str]],
                   geometry: Geometry, slices: Sequence[tuple[str, int]], *,
                   anatomy_window: tuple[float, float] = CT_WINDOWS["soft tissue"], pet_max: float = PET_DISPLAY_MAX,
                   title: str = "", dpi: int = 100) -> Path:
    """Fused slices: one row per (plane, index) of ``slices``, one column per PET of ``pets`` (volume SUV,
    caption), each over ``anatomy`` (CT in HU or MR, same grid) with a colour bar in SUV."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    rows, cols = len(slices), len(pets)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.0 * rows), squeeze=False, layout="constrained")
    for r, (plane_name, index) in enumerate(slices):
        base, aspect = plane(anatomy, geometry, plane_name, index)
        for c, (volume, caption) in enumerate(pets):
            overlay, _ = plane(volume, geometry, plane_name, index)
            ax = axes[r][c]
            ax.imshow(fuse(base, overlay, anatomy_window=anatomy_window, pet_max=pet_max), aspect=aspect,
                      interpolation="antialiased")
            ax.set_title(f"{caption}, {plane_name} {index}", fontsize=10)
            ax.axis("off")
    bar = fig.colorbar(ScalarMappable(Normalize(0.0, pet_max), cmap=PET_CMAP), ax=axes.ravel().tolist(),
                       fraction=0.03, pad=0.02)
    bar.set_label("SUV (g/ml), over the anatomy in grey")
    return _save(fig, path, title, dpi)
