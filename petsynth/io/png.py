"""PNG panels of slices (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from petsynth.utils.files import atomic_file

#: display settings per image kind: colour map, low, high (None: the image's own range)
DISPLAY = {"ct": ("gray", -250.0, 350.0), "pet": ("gray_r", 0.0, 8.0), "error": ("RdBu_r", -3.0, 3.0),
           "map": ("gray", 0.0, 1.0), "mr": ("gray", None, None)}


def save_panel(path: str | Path, rows: Sequence[Sequence[tuple[np.ndarray, str, str]]], title: str = "",
               dpi: int = 80) -> Path:
    """Save a grid of images as a PNG (atomically); ``rows`` of (image (H, W), caption, kind in
    :data:`DISPLAY`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.2 * n_cols, 3.0 * n_rows), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(row):
                continue
            image, caption, kind = row[c]
            cmap, lo, hi = DISPLAY[kind]
            im = ax.imshow(np.asarray(image, dtype=np.float32), cmap=cmap, vmin=lo, vmax=hi)
            ax.set_title(caption, fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_file(path) as fh:
            fig.savefig(fh, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return path
