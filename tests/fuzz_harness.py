"""Byte-level fuzzing of petsynth's DICOM reading: mutate one file of a valid study, then scan and prepare.

A case passes when nothing escapes: the scan lists every file as used or ignored with a reason, and prepare
ends the study as "ok" or "failed" with a reason that is not the catch-all "unexpected ..." (an exception
type petsynth did not expect is a bug even when the batch survives it). Used by ``tests/test_fuzz.py`` (a
short budget) and ``benchmarks/fuzz_dicom.py`` (long runs).
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from petsynth.data.dicom_index import scan_dicom
from petsynth.data.prepare import prepare_dataset

MUTATIONS = ("truncate", "header_bytes", "zero_range", "duplicate_range", "tag_length", "empty")


def mutate(data: bytes, kind: str, rng: random.Random) -> bytes:
    """One mutation of a file's bytes: cut it anywhere, overwrite 1-16 bytes of its first 4 KB (the header),
    zero a range, repeat a range, give a data element an absurd length, or empty it."""
    n = len(data)
    if kind == "truncate":
        return data[: rng.randrange(0, n)]
    if kind == "header_bytes":
        out = bytearray(data)
        for _ in range(rng.randint(1, 16)):
            out[rng.randrange(0, min(n, 4096))] = rng.randrange(256)
        return bytes(out)
    if kind == "zero_range":
        a = rng.randrange(0, n)
        b = min(n, a + rng.randint(1, 512))
        return data[:a] + bytes(b - a) + data[b:]
    if kind == "duplicate_range":
        a = rng.randrange(0, n)
        b = min(n, a + rng.randint(1, 512))
        return data[:b] + data[a:b] + data[b:]
    if kind == "tag_length":  # a 2- or 4-byte length field somewhere in the header set to a huge value
        out = bytearray(data)
        at = rng.randrange(132, min(n, 2048) - 4) if n > 140 else 0
        out[at:at + 4] = rng.choice([b"\xff\xff\xff\xff", b"\xff\xff\x00\x00", b"\x00\x00\xff\x7f"])
        return bytes(out)
    if kind == "empty":
        return b""
    raise ValueError(f"unknown mutation {kind!r}")


@dataclass
class Case:
    """One fuzz case: which file was mutated how, and what went wrong (empty: nothing)."""

    seed: int
    file: str
    kind: str
    problem: str = ""


def run_case(study: Path, work: Path, seed: int, prepare: bool = True) -> Case:
    """Copy ``study`` into ``work``, mutate one of its DICOM files (chosen and mutated by ``seed``), scan it and,
    with ``prepare``, prepare it; returns the case with its problem, if any."""
    rng = random.Random(seed)
    case_dir = work / f"case-{seed}"
    shutil.copytree(study, case_dir / "study")
    files = sorted((case_dir / "study").rglob("*.dcm"))
    target = rng.choice(files)
    kind = rng.choice(MUTATIONS)
    case = Case(seed, str(target.relative_to(case_dir)), kind)
    target.write_bytes(mutate(target.read_bytes(), kind, rng))
    try:
        _, skipped = scan_dicom([case_dir / "study"])
        if any(not s.reason for s in skipped):
            case.problem = "a skipped file without a reason"
        if prepare:
            report = prepare_dataset([case_dir / "study"], case_dir / "ds", "ct2pet", size=32, key=b"fuzz")
            for r in report.results:
                if r.status == "failed" and r.reason.startswith("unexpected"):
                    case.problem = r.reason
    except Exception as err:  # noqa: BLE001 - that is what the harness looks for
        case.problem = f"escaped: {type(err).__name__}: {err}"
    finally:
        shutil.rmtree(case_dir, ignore_errors=True)
    return case
