"""2-D parallel-beam projection (Radon transform), its exact adjoint, FBP, MLEM and Poisson counts.

Used by the phantom simulator (emission -> sinogram -> counts -> reconstruction) and by uPETe's Poisson
diffusion. No maintained projector installs here without a GPU toolchain (parallelproj needs its C/CUDA
library; torch-radon is unmaintained), and scikit-image's ``radon`` is numpy-only with no matched
adjoint, so this is a small torch projector: each view rotates the image with bilinear sampling
(``grid_sample``) and sums along the rays; the back projection is the exact adjoint of that linear
map, which MLEM needs. For small geometries (up to about 160 x 160 with as many views) the same
bilinear weights are built once per process into a sparse system matrix (and its transpose), which
is 3-10x faster than sampling; larger ones sample on the fly and take the adjoint from
``grid_sample``'s gradient. scikit-image's ``radon`` is the reference it is tested against.

Geometry: square images (B, N, N) indexed [row=y, col=x] with unit pixels; the object must lie inside
the inscribed circle (the transaxial field of view). View angles theta_k = k * pi / A, k = 0..A-1; the
detector axis of view theta is (cos theta, sin theta) in (x, y) with N bins of one pixel; rays are sampled
every pixel along (-sin theta, cos theta). Sinograms are (B, A, N) line integrals in PIXEL lengths:
multiply by the pixel size in cm to get physical line integrals of mu.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Literal

import torch
import torch.nn.functional as F

FilterName = Literal["ramp", "shepp-logan", "hann"]
#: Largest number of sampled points held at once by one grid_sample call (bounds memory, ~256 MB fp32).
_MAX_SAMPLES_PER_CALL = 64 * 1024 * 1024
#: Largest system matrix (4 A N^2 stored weights) kept in memory; ~200 MB with its transpose at the limit.
_MAX_MATRIX_ENTRIES = 2**24


class ParallelProjector:
    """Parallel-beam projector for square (B, N, N) images with ``num_angles`` views over [0, pi).

    Args:
        size: N, the image side and the number of detector bins.
        num_angles: number of views A (default N).
        device, dtype: where the sampling grid lives (float32 default).
        use_matrix: use a cached sparse system matrix (default: when it has at most 2^24 entries).
    """

    def __init__(self, size: int, num_angles: int | None = None, device=None,
                 dtype: torch.dtype = torch.float32, use_matrix: bool | None = None):
        if size < 2:
            raise ValueError(f"image size must be at least 2, got {size}")
        self.size = int(size)
        self.num_angles = int(num_angles or size)
        if self.num_angles < 1:
            raise ValueError(f"num_angles must be positive, got {num_angles}")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        self.angles = torch.arange(self.num_angles, dtype=torch.float64) * math.pi / self.num_angles
        self._grid = self._sampling_grid().to(device=self.device, dtype=dtype)
        if use_matrix is None:
            use_matrix = 4 * self.num_angles * self.size**2 <= _MAX_MATRIX_ENTRIES
        self._matrices = _system_matrices(self.size, self.num_angles, str(self.device)) if use_matrix else None

    def _sampling_grid(self) -> torch.Tensor:
        """Normalised sample positions, (A, N_ray, N_bin, 2) with [..., 0] = x and [..., 1] = y."""
        n = self.size
        centred = torch.arange(n, dtype=torch.float64) - (n - 1) / 2  # pixel-centre offsets
        s = centred.view(1, 1, n)          # detector bin
        t = centred.view(1, n, 1)          # position along the ray
        cos, sin = torch.cos(self.angles).view(-1, 1, 1), torch.sin(self.angles).view(-1, 1, 1)
        x = s * cos - t * sin
        y = s * sin + t * cos
        # align_corners=False: pixel i has its centre at (2 i + 1) / n - 1
        return torch.stack((2 * x / n, 2 * y / n), dim=-1)

    def _check(self, x: torch.Tensor, shape: tuple[int, int], what: str) -> torch.Tensor:
        if x.ndim != 3 or tuple(x.shape[1:]) != shape:
            raise ValueError(f"{what} must have shape (B, {shape[0]}, {shape[1]}), got {tuple(x.shape)}")
        return x.to(device=self.device, dtype=self.dtype)

    def _angle_chunks(self, batch: int) -> int:
        per_angle = batch * self.size * self.size
        return max(1, min(self.num_angles, _MAX_SAMPLES_PER_CALL // max(per_angle, 1)))

    def _sample(self, img: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """img (B, 1, N, N), grid (a, N, N, 2) -> samples (B, a, N_ray, N_bin)."""
        b, a, n = img.shape[0], grid.shape[0], self.size
        g = grid.reshape(1, a * n, n, 2).expand(b, -1, -1, -1)
        out = F.grid_sample(img, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out.view(b, a, n, n)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """Line integrals in pixel lengths: img (B, N, N) -> sinogram (B, A, N)."""
        img = self._check(img, (self.size, self.size), "image")
        if self._matrices is not None:
            return _apply(self._matrices[0], img, (self.num_angles, self.size))
        img = img[:, None]
        step = self._angle_chunks(img.shape[0])
        views = [self._sample(img, self._grid[a:a + step]).sum(dim=2)
                 for a in range(0, self.num_angles, step)]
        return torch.cat(views, dim=1)

    __call__ = forward

    def back(self, sino: torch.Tensor) -> torch.Tensor:
        """Exact adjoint of :meth:`forward`: sinogram (B, A, N) -> image (B, N, N)."""
        sino = self._check(sino, (self.num_angles, self.size), "sinogram")
        if self._matrices is not None:
            return _apply(self._matrices[1], sino, (self.size, self.size))
        b, n = sino.shape[0], self.size
        step = self._angle_chunks(b)
        out = torch.zeros(b, 1, n, n, device=self.device, dtype=self.dtype)
        for a in range(0, self.num_angles, step):
            grid = self._grid[a:a + step]
            smeared = sino[:, a:a + step, None, :].expand(-1, -1, n, -1)  # adjoint of the ray sum
            with torch.enable_grad():
                probe = torch.zeros(b, 1, n, n, device=self.device, dtype=self.dtype, requires_grad=True)
                (grad,) = torch.autograd.grad(self._sample(probe, grid), probe, grad_outputs=smeared)
            out += grad
        return out[:, 0]

    def fov_mask(self) -> torch.Tensor:
        """Boolean (N, N) mask of the inscribed circle, where reconstructions are valid."""
        c = torch.arange(self.size, device=self.device, dtype=torch.float64) - (self.size - 1) / 2
        return (c[None, :] ** 2 + c[:, None] ** 2) <= (self.size / 2) ** 2


def _apply(matrix: torch.Tensor, x: torch.Tensor, out_shape: tuple[int, int]) -> torch.Tensor:
    """Sparse (M, K) matrix times a batch (B, ...) flattened to (B, K) -> (B, *out_shape)."""
    flat = x.reshape(x.shape[0], -1).t().to(matrix.dtype)
    return (matrix @ flat).t().reshape(x.shape[0], *out_shape).to(x.dtype)


@functools.lru_cache(maxsize=4)
def _system_matrices(size: int, num_angles: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The bilinear ray-sampling weights of :class:`ParallelProjector` as sparse CSR matrices.

    Returns (A, A^T) with A of shape (num_angles * size, size * size): row (view, bin), column
    (row * size + col). Entries are the same weights ``grid_sample`` uses, so both paths agree.
    """
    n = size
    grid = ParallelProjector(n, num_angles, use_matrix=False, dtype=torch.float64)._grid
    px = (grid[..., 0] + 1) * n / 2 - 0.5  # pixel coordinates, (A, N_ray, N_bin)
    py = (grid[..., 1] + 1) * n / 2 - 0.5
    x0, y0 = px.floor(), py.floor()
    fx, fy = px - x0, py - y0
    cols, vals = [], []
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi < n) & (yi >= 0) & (yi < n)
        cols.append(torch.where(inside, yi * n + xi, 0).long())
        vals.append(torch.where(inside, w, 0).float())
    # rows are (view, bin); each row gathers N_ray samples x 4 neighbours
    col = torch.stack(cols, -1).permute(0, 2, 1, 3).reshape(num_angles * n, 4 * n)
    val = torch.stack(vals, -1).permute(0, 2, 1, 3).reshape(num_angles * n, 4 * n)
    keep = val > 0
    crow = torch.zeros(num_angles * n + 1, dtype=torch.long)
    crow[1:] = keep.sum(1).cumsum(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        forward = torch.sparse_csr_tensor(crow, col[keep], val[keep], (num_angles * n, n * n))
        adjoint = forward.t().to_sparse_csr()
    return forward.to(device), adjoint.to(device)


def _ramp_kernel(n_pad: int, window: FilterName, dtype, device) -> torch.Tensor:
    """Frequency response of the band-limited ramp (from its spatial form, no DC offset), (n_pad,)."""
    k = torch.arange(n_pad, device=device, dtype=torch.float64)
    k = torch.where(k > n_pad // 2, k - n_pad, k)  # signed spatial offsets
    h = torch.zeros(n_pad, dtype=torch.float64, device=device)
    h[k == 0] = 0.25
    odd = (k.remainder(2) == 1)
    h[odd] = -1.0 / (math.pi * k[odd]) ** 2
    response = torch.fft.fft(h).real * 2  # ramp |f| with f in cycles/pixel, times 2 (Kak & Slaney)
    freq = torch.fft.fftfreq(n_pad, device=device, dtype=torch.float64)  # -0.5..0.5
    if window == "shepp-logan":
        response = response * torch.sinc(freq)
    elif window == "hann":
        response = response * 0.5 * (1 + torch.cos(2 * math.pi * freq))
    elif window != "ramp":
        raise ValueError(f"unknown FBP filter {window!r}; choose ramp, shepp-logan or hann")
    return response.to(dtype)


def fbp(projector: ParallelProjector, sino: torch.Tensor, filter: FilterName = "ramp") -> torch.Tensor:
    """Filtered back projection: sinogram (B, A, N) in pixel lengths -> image (B, N, N)."""
    n = projector.size
    n_pad = max(64, 2 ** math.ceil(math.log2(2 * n)))
    kernel = _ramp_kernel(n_pad, filter, torch.float32, projector.device)
    spectrum = torch.fft.fft(F.pad(sino.to(projector.device, torch.float32), (0, n_pad - n)), dim=-1)
    filtered = torch.fft.ifft(spectrum * kernel, dim=-1).real[..., :n]
    return projector.back(filtered.to(projector.dtype)) * (math.pi / (2 * projector.num_angles))


def mlem(projector: ParallelProjector, counts: torch.Tensor, iterations: int,
         multiplicative: torch.Tensor | None = None, additive: torch.Tensor | None = None,
         x0: torch.Tensor | None = None) -> torch.Tensor:
    """Maximum-likelihood expectation maximisation for counts ~ Poisson(m * A x + r).

    Args:
        counts: measured counts, (B, A, N).
        iterations: number of MLEM updates (no subsets).
        multiplicative: m, per-bin factors (attenuation x sensitivity x scale), (B, A, N); default 1.
        additive: r, expected randoms + scatter counts per bin, (B, A, N); default 0.
        x0: starting image (B, N, N); default uniform inside the field of view.

    Returns:
        x (B, N, N) in the units that make m * A x the expected counts.
    """
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    counts = counts.to(projector.device, projector.dtype)
    m = torch.ones_like(counts) if multiplicative is None else multiplicative.to(counts)
    r = torch.zeros_like(counts) if additive is None else additive.to(counts)
    fov = projector.fov_mask().to(counts.dtype)
    sensitivity = projector.back(m)
    x = fov.expand(counts.shape[0], -1, -1).clone() if x0 is None else x0.to(counts).clone()
    inv_sens = torch.where(sensitivity > 0, 1.0 / sensitivity.clamp_min(1e-12), torch.zeros_like(sensitivity))
    for _ in range(iterations):
        expected = m * projector.forward(x) + r
        ratio = torch.where(expected > 0, counts / expected.clamp_min(1e-12), torch.zeros_like(expected))
        x = x * projector.back(m * ratio) * inv_sens
    return x


def poisson_counts(expected: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Poisson deviates with the given (non-negative) means, same shape and dtype."""
    if (expected < 0).any():
        raise ValueError("expected counts must be non-negative")
    return torch.poisson(expected, generator=generator)
