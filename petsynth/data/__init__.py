"""Data: DICOM/NIfTI reading, SUV, pairing and the dataset store (studies written by :mod:`petsynth.phantom`
are read like any other).

``petsynth.data.open_dataset(path)`` opens a prepared dataset (see :mod:`petsynth.data.store`).
"""

from typing import Any

__all__ = ["open_dataset"]


def __getattr__(name: str) -> Any:  # lazy: importing petsynth.data stays light
    if name == "open_dataset":
        from petsynth.data.store import open_dataset

        return open_dataset
    raise AttributeError(f"module 'petsynth.data' has no attribute {name!r}")
