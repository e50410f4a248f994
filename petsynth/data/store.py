"""The prepared-dataset store: one zarr group per study, written atomically, read lazily.

Layout::

    DATASET/
      dataset.yaml                 task, slice size, store version, arrays present, petsynth version
      splits.json                  study -> split (train/val/test), written when preparation finishes
      studies/<study>/             one zarr v3 group per study (built under a temporary name, then renamed)
        source, target[, guidance, truth, labels, mask]   (n, H, W) arrays (float32; labels, mask uint8), one blosc-compressed
                                                    chunk per slice, sharded in files of SLICES_PER_SHARD slices
                                                    (standard zarr v3 sharding, written by _write_shards for speed)
        attrs: per-slice metadata (z_mm, ...), study metadata (with "label_table" when labels are stored)

Values are physical (CT in HU, PET in SUVbw, MR as read); nothing is rescaled. A study folder exists only
when complete, so a killed preparation resumes by skipping the studies present. Nothing is loaded into
memory until an item is read; each DataLoader worker opens its own handles.

A study's ``labels`` are named by its label table (study metadata ``label_table``, read with
:meth:`PreparedDataset.label_table`): rows ``{"label": int, "name": str, "kind": "organ" | "lesion"}``; 0 is
background and has no row. Studies written before tables were stored have none (an empty table).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import google_crc32c
import numcodecs
import numpy as np
import torch
import yaml
import zarr

import petsynth
from petsynth.data.slabs import CONTEXT_KEY, context_stack
from petsynth.utils.files import atomic_directory, atomic_file, atomic_write_text

STORE_VERSION = 1
DATASET_FILE = "dataset.yaml"
SPLITS_FILE = "splits.json"
STUDIES_DIR = "studies"
SPLITS = ("train", "val", "test")
#: Array names a study may hold; "source" and "target" are always present.
ARRAY_NAMES = ("source", "target", "guidance", "truth", "labels", "mask")
#: Arrays stored as uint8 (the rest float32).
UINT8_ARRAYS = ("labels", "mask")
#: Per-slice metadata keys stored for every study (lists of length n).
SLICE_KEYS = ("index", "z_mm")
#: Per-study metadata keys copied into every item.
#: dataset.yaml's mark of an lpet2spet dataset prepared without its low-dose images (no "source" arrays)
STANDARD_DOSE_ONLY = "standard_dose_only"
STUDY_KEYS = ("spacing_mm", "kvp", "vendor", "units", "dose_fraction")
#: Study metadata key of the label table, and the kinds of its rows.
LABEL_TABLE = "label_table"
LABEL_KINDS = ("organ", "lesion")
#: Optional "class" of a lesion row (from the phantom's truth.json): visible on CT and FDG-avid, avid but not
#: visible on CT, or a benign, non-avid mass. Rows without one (older tables) are "unclassified".
LESION_CLASSES = ("ct_visible", "ct_occult", "benign")


#: Slices are compressed one per chunk (random access reads one slice) and stored in shards of this many
#: slices (one file each), so a study is a handful of files rather than one per slice.
SLICES_PER_SHARD = 64
#: Lossless compression of each slice: byte-shuffled blosc lz4 at level 5. Measured on 893 prepared 256x256
#: phantom slices (one thread; ratio, then encode/decode ms per slice), CT source | PET target:
#:   zstd-1: 2.72, 0.77/0.39 | 3.12, 0.92/0.45      zstd-3: 2.82, 1.88/0.27 | 3.36, 2.56/0.42
#:   lz4-1:  2.45, 0.18/0.20 | 2.20, 0.35/0.25      lz4-5:  2.56, 0.19/0.16 | 2.33, 0.38/0.20
#: lz4 encodes 2.5-4x faster and decodes about 2x faster than zstd-1 for about 20% more disk (6% CT, 34% PET);
#: preparation and loading speed matter more here. Readers need nothing new: the codec is in zarr.json.
_COMPRESSOR = zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
_LE_BYTES = {"name": "bytes", "configuration": {"endian": "little"}}
_NO_CHUNK = 2**64 - 1  # offset and length of an absent inner chunk in a shard index


class DatasetError(ValueError):
    """A dataset folder is missing, incompatible or damaged; the message names the path and the problem."""


class DatasetExistsError(DatasetError):
    """The folder already holds a dataset and resuming it was not asked for."""


def create_dataset(root: str | Path, task: str, size: int, *, resume: bool = False,
                   standard_dose_only: bool = False) -> Path:
    """Create ``root`` for ``task`` at ``size`` x ``size`` slices, or check it matches when resuming.
    ``standard_dose_only``: an lpet2spet dataset without low-dose images (recorded as such)."""
    root = Path(root)
    info = {"task": task, "size": int(size), "store_version": STORE_VERSION,
            "petsynth_version": petsynth.__version__}
    if standard_dose_only:
        info[STANDARD_DOSE_ONLY] = True
    meta = root / DATASET_FILE
    if meta.exists():
        if not resume:
            raise DatasetExistsError(f"{root} already holds a dataset: continue it with resume=True, or choose "
                                     "a new folder")
        found = yaml.safe_load(meta.read_text())
        for key in ("task", "size", "store_version", STANDARD_DOSE_ONLY):
            if found.get(key) != info.get(key):
                raise DatasetError(f"{root} was prepared with {key}={found.get(key)!r}, not {info[key]!r}: "
                                   "resume with the same settings or choose a new folder")
        return root
    foreign = _foreign_entries(root)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise DatasetError(f"{root} is not empty and holds no dataset ({shown}): a dataset goes into a new or "
                           "empty folder, so that nothing of yours is mixed with it or overwritten")
    (root / STUDIES_DIR).mkdir(parents=True, exist_ok=True)
    atomic_write_text(meta, yaml.safe_dump(info, sort_keys=False))
    return root


def _foreign_entries(root: Path) -> list[str]:
    """What a folder holds other than the start of a dataset (an empty ``studies/`` and the hidden temporary
    files of a run killed before its ``dataset.yaml`` was written)."""
    if not root.exists():
        return []
    if not root.is_dir():
        raise DatasetError(f"{root} is a file, not a folder: choose a new folder for the dataset")
    out = []
    for entry in sorted(root.iterdir()):
        if entry.name == STUDIES_DIR and entry.is_dir() and \
                all(p.name.startswith(".") for p in entry.iterdir()):
            continue
        if entry.name.startswith(f".{DATASET_FILE}.") and entry.name.endswith(".tmp"):
            continue
        out.append(entry.name)
    return out


def finished_studies(root: str | Path) -> list[str]:
    """Names of the complete studies in a dataset (hidden temporary folders are not studies)."""
    folder = Path(root) / STUDIES_DIR
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if folder.exists() else []


def has_study(root: str | Path, study: str) -> bool:
    """Whether the dataset holds the complete study ``study`` (a study folder exists only when complete)."""
    return (Path(root) / STUDIES_DIR / study).is_dir()


def write_study(root: str | Path, study: str, arrays: Mapping[str, np.ndarray],
                slice_meta: Mapping[str, Sequence[Any]], study_meta: Mapping[str, Any],
                overwrite: bool = False) -> Path:
    """Write one study atomically.

    Args:
        study: pseudonymous study id (never a patient identifier).
        arrays: "source" and "target" (and optionally "guidance", "truth", "labels"), each (n, H, W); "target"
            alone (no "source") in a dataset created ``standard_dose_only``.
        slice_meta: per-slice lists of length n (at least ``SLICE_KEYS``).
        study_meta: JSON-safe study facts (``STUDY_KEYS`` and any others); ``label_table`` (optional, with a
            "labels" array): rows ``{"label": 1..255, "name": str, "kind": "organ" | "lesion"}``, labels unique.
    """
    unknown = set(arrays) - set(ARRAY_NAMES)
    meta = Path(root) / DATASET_FILE
    info = (yaml.safe_load(meta.read_text()) or {}) if meta.is_file() else {}
    needed = {"target"} if info.get(STANDARD_DOSE_ONLY) else {"source", "target"}
    if unknown or not needed <= set(arrays):
        raise ValueError(f"arrays must include {' and '.join(sorted(needed, reverse=True))} and only {ARRAY_NAMES}; "
                         f"got {sorted(arrays)}")
    n = arrays["target"].shape[0]
    for name, a in arrays.items():
        if a.ndim != 3 or a.shape != arrays["target"].shape:
            raise ValueError(f"array {name!r} has shape {a.shape}, expected {arrays['target'].shape}")
    for key in SLICE_KEYS:
        if len(slice_meta.get(key, ())) != n:
            raise ValueError(f"slice metadata {key!r} must have {n} entries")
    if LABEL_TABLE in study_meta:
        if "labels" not in arrays:
            raise ValueError(f"a {LABEL_TABLE} needs a labels array")
        study_meta = {**study_meta, LABEL_TABLE: check_label_table(study_meta[LABEL_TABLE])}
    with atomic_directory(Path(root) / STUDIES_DIR / study, overwrite=overwrite) as tmp:
        group = zarr.open_group(tmp, mode="w")
        for name, a in arrays.items():
            a = np.ascontiguousarray(a, dtype="<u1" if name in UINT8_ARRAYS else "<f4")
            array = group.create_array(name, shape=a.shape, dtype=a.dtype, chunks=(1, *a.shape[1:]),
                                       shards=(min(n, SLICES_PER_SHARD), *a.shape[1:]), compressors=_COMPRESSOR)
            _write_shards(array, tmp / name, a)
        group.attrs.update({"study": study, "slices": int(n),
                            "slice_meta": {k: [_plain(v) for v in vs] for k, vs in slice_meta.items()},
                            "study_meta": {k: _plain(v) for k, v in study_meta.items()}})
    return Path(root) / STUDIES_DIR / study


def check_label_table(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows as plain ``{"label", "name", "kind"}`` dicts; ValueError naming the first bad row.

    Lesion rows may also have ``"class"`` (one of :data:`LESION_CLASSES`) and ``"lesion_kind"`` (a name such as
    "lung_nodule"); they are kept when given, and organ rows may have neither."""
    table, seen = [], set()
    for row in rows:
        label, name, kind = row.get("label"), row.get("name"), row.get("kind")
        if (isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 < label < 256
                or not isinstance(name, str) or not name or kind not in LABEL_KINDS or label in seen):
            raise ValueError(f"bad label table row {dict(row)!r}: need a unique int label 1..255, a name and "
                             f"a kind in {LABEL_KINDS}")
        extra = {k: row[k] for k in ("class", "lesion_kind") if row.get(k) is not None}
        if extra and kind != "lesion":
            raise ValueError(f"bad label table row {dict(row)!r}: only lesion rows have a class or lesion_kind")
        if "class" in extra and extra["class"] not in LESION_CLASSES:
            raise ValueError(f"bad label table row {dict(row)!r}: a lesion class is one of {LESION_CLASSES}")
        if "lesion_kind" in extra and not (isinstance(extra["lesion_kind"], str) and extra["lesion_kind"]):
            raise ValueError(f"bad label table row {dict(row)!r}: lesion_kind must be a non-empty string")
        seen.add(label)
        table.append({"label": int(label), "name": name, "kind": kind, **extra})
    return table


def _write_shards(array: zarr.Array, folder: Path, data: np.ndarray) -> None:
    """Write ``data`` (n, H, W), little-endian, values as given, into the shards of the new, empty ``array``.

    zarr's own write costs about 1 ms of Python/async overhead per chunk (per slice), more than compressing it;
    this writes the same standard zarr v3 files directly, following the sharding_indexed codec with the
    settings zarr recorded in ``folder/zarr.json``. Each shard file (at zarr's key for it, ``c/<shard>/0/0``)
    holds its slices' blosc streams back to back, then the index: (offset, nbytes) in bytes per slice as
    little-endian uint64 (2**64-1 for both where absent: the slices past n in a last partial shard), then the
    index's crc32c (uint32 LE). Unlike zarr, all-zero (fill value) slices are stored too, at a few bytes each;
    they read back the same. Raises RuntimeError if zarr's metadata asks for any other layout.
    """
    meta = json.loads((folder / "zarr.json").read_text())  # as zarr wrote it
    codecs = meta["codecs"]
    shard = codecs[0]["configuration"] if [c["name"] for c in codecs] == ["sharding_indexed"] else {}
    inner = shard.get("codecs", [])
    bytes_ok = [_LE_BYTES] + ([{"name": "bytes"}] if data.itemsize == 1 else [])  # no endianness for 1 byte
    if not (shard.get("chunk_shape") == [1, *data.shape[1:]] and shard.get("index_location") == "end"
            and shard.get("index_codecs") == [_LE_BYTES, {"name": "crc32c"}]
            and len(inner) == 2 and inner[0] in bytes_ok and inner[1]["name"] == "blosc"):
        raise RuntimeError(f"zarr {zarr.__version__} wrote array codecs this writer does not produce: {codecs}")
    config = dict(inner[1]["configuration"])  # cname, clevel, shuffle, typesize, blocksize
    config["shuffle"] = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[config["shuffle"]]
    blosc = numcodecs.Blosc(**config)
    per_shard = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
    for s, start in enumerate(range(0, len(data), per_shard)):
        chunks = [blosc.encode(x) for x in data[start:start + per_shard]]
        sizes = np.array([len(c) for c in chunks], dtype="<u8")
        index = np.full((per_shard, 2), _NO_CHUNK, dtype="<u8")
        index[:len(chunks)] = np.stack([np.cumsum(sizes) - sizes, sizes], axis=1)
        index_bytes = index.tobytes()
        path = folder / array.metadata.encode_chunk_key((s, 0, 0))
        with atomic_file(path) as fh:
            fh.writelines([*chunks, index_bytes, google_crc32c.value(index_bytes).to_bytes(4, "little")])


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (tuple, list, np.ndarray)):
        return [_plain(x) for x in v]
    return v


def study_attrs(root: str | Path, study: str) -> dict[str, Any]:
    """The stored attributes (per-slice and study metadata) of one study."""
    return dict(zarr.open_group(Path(root) / STUDIES_DIR / study, mode="r").attrs)


def write_splits(root: str | Path, splits: Mapping[str, str]) -> None:
    """Record the split of every study (atomically)."""
    bad = {s for s in splits.values() if s not in SPLITS}
    if bad:
        raise ValueError(f"unknown split names {sorted(bad)}; use {SPLITS}")
    atomic_write_text(Path(root) / SPLITS_FILE, json.dumps(dict(sorted(splits.items())), indent=1))


class PreparedDataset(torch.utils.data.Dataset):
    """Slices of a prepared dataset; items are dicts of float32 arrays in physical units and metadata.

    Keys: "source", "target" (and "guidance", "truth", "labels", "mask" where stored), each (H, W); "study",
    "split", "index" (slice index within the study), "z_mm", "spacing_mm", "kvp", "vendor", "units",
    "dose_fraction"; "plane" ("axial", "coronal", "sagittal") in mr2pet datasets. With ``context_slices`` c > 0
    also "source_context" (2c, H, W): the source slices around it (:func:`petsynth.data.slabs.context_stack`).
    :meth:`label_table` names a study's labels.
    """

    def __init__(self, root: str | Path, split: str | None = None, context_slices: int = 0):
        if context_slices < 0:
            raise ValueError(f"context_slices must be >= 0, got {context_slices}")
        self.context_slices = int(context_slices)
        self.root = Path(root)
        meta = self.root / DATASET_FILE
        if not meta.is_file():
            raise DatasetError(f"{self.root} is not a petsynth dataset: no {DATASET_FILE}")
        self.info = yaml.safe_load(meta.read_text())
        if self.info.get("store_version", 0) > STORE_VERSION:
            raise DatasetError(f"{self.root} uses store version {self.info['store_version']}: upgrade petsynth")
        splits_path = self.root / SPLITS_FILE
        self.splits: dict[str, str] = json.loads(splits_path.read_text()) if splits_path.exists() else {}
        if split is not None and split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        studies = finished_studies(self.root)
        if split is not None:
            studies = [s for s in studies if self.splits.get(s) == split]
        self.split_name = split
        self.studies = studies
        self._attrs = {s: study_attrs(self.root, s) for s in studies}
        counts = np.array([self._attrs[s]["slices"] for s in studies], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(counts)])
        self._groups: dict[str, zarr.Group] = {}

    @property
    def task(self) -> str:
        return self.info["task"]

    @property
    def has_source(self) -> bool:
        """False for an lpet2spet dataset prepared with only the standard-dose PET (no "source" images)."""
        return not self.info.get(STANDARD_DOSE_ONLY, False)

    def split(self, name: str) -> "PreparedDataset":
        """The studies of one split ("train", "val" or "test"), with this dataset's ``context_slices``."""
        return PreparedDataset(self.root, split=name, context_slices=self.context_slices)

    def with_context(self, context_slices: int) -> "PreparedDataset":
        """This dataset (the same studies and open handles) with items carrying ``context_slices`` neighbouring
        source slices on each side (0: none)."""
        if context_slices < 0:
            raise ValueError(f"context_slices must be >= 0, got {context_slices}")
        view = copy.copy(self)
        view.context_slices = int(context_slices)
        return view

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def study_meta(self, study: str) -> dict[str, Any]:
        """Per-study metadata (spacing_mm, kvp, vendor, units, dose_fraction, task, patient pseudonym,
        label_table when labelled)."""
        return dict(self._attrs[study]["study_meta"])

    def label_table(self, study: str) -> list[dict[str, Any]]:
        """The study's label table: rows ``{"label", "name", "kind"}`` naming its labels ([] when it has none);
        lesion rows may have ``"class"`` and ``"lesion_kind"`` (tables written before them have neither)."""
        return [dict(row) for row in self._attrs[study]["study_meta"].get(LABEL_TABLE, [])]

    def slice_z_mm(self, study: str) -> list[float]:
        """The z (mm) of a study's slices, in slice order (from its metadata: no array is read)."""
        return [float(z) for z in self._attrs[study]["slice_meta"].get("z_mm", [])]

    def study_slices(self, study: str) -> range:
        """Dataset indices of one study's slices, in slice order."""
        s = self.studies.index(study)
        return range(int(self._offsets[s]), int(self._offsets[s + 1]))

    def slice_study(self, i: int) -> str:
        """The study that dataset slice ``i`` belongs to (no array is read)."""
        return self.studies[int(np.searchsorted(self._offsets, i % len(self), side="right") - 1)]

    def __getstate__(self):  # DataLoader workers open their own zarr handles
        state = dict(self.__dict__)
        state["_groups"] = {}
        return state

    def _group(self, study: str) -> zarr.Group:
        g = self._groups.get(study)
        if g is None:
            g = self._groups[study] = zarr.open_group(self.root / STUDIES_DIR / study, mode="r")
        return g

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"slice {i} out of range for a dataset of {n} slices")
        i %= n
        s = int(np.searchsorted(self._offsets, i, side="right") - 1)
        return self._read(self.studies[s], int(i - self._offsets[s]), None)

    def slab(self, study: str, start: int, depth: int) -> dict[str, Any]:
        """Slices ``start .. start + depth - 1`` of one study as one item: its images (depth, H, W), its slice
        metadata ("index", "z_mm", ...) those of the first slice, the study's metadata as for a slice."""
        count = int(self._attrs[study]["slices"])
        if depth < 1 or not 0 <= start <= count - depth:
            raise IndexError(f"slab {start}..{start + depth - 1} outside the {count} slices of {study}")
        return self._read(study, start, depth)

    def _read(self, study: str, k: int, depth: int | None) -> dict[str, Any]:
        """Slice ``k`` of a study (depth None: arrays (H, W)) or the slab from it (arrays (depth, H, W))."""
        group, attrs = self._group(study), self._attrs[study]
        rows = k if depth is None else slice(k, k + depth)
        item: dict[str, Any] = {}
        for name in ARRAY_NAMES:
            if name in group:
                item[name] = np.asarray(group[name][rows])
        if self.context_slices and depth is None and "source" in group:
            item[CONTEXT_KEY] = context_stack(group["source"], k, self.context_slices)
        item["study"] = study
        item["split"] = self.splits.get(study, "")
        for key, values in attrs["slice_meta"].items():
            item[key] = values[k]
        for key in STUDY_KEYS:
            item[key] = attrs["study_meta"].get(key)
        return item


def open_dataset(path: str | Path, split: str | None = None, context_slices: int = 0) -> PreparedDataset:
    """Open a prepared dataset (all studies, or one split; items with ``context_slices`` neighbours on each side)."""
    return PreparedDataset(path, split=split, context_slices=context_slices)
