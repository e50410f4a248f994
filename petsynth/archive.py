"""Translating a whole archive: every DICOM study under a folder, one output folder per study.

``petsynth translate MODEL ARCHIVE --out OUT`` when ARCHIVE holds more than one study (:func:`translate_archive`):

- the archive is scanned once; each study is one task (:func:`petsynth.parallel.run_each`: here, a pool of
  local processes, or a Dask cluster), translated as ``translate`` would translate its folder alone
  (:func:`petsynth.translation.study_inputs`, :func:`petsynth.translation.translate_inputs`);
- each process loads the model once (:func:`petsynth.inference.cached_model`) and uses its own GPU when it has one
  (``device="auto"``);
- ``OUT/<pseudonym>/`` per study, where the pseudonym is the keyed HMAC of its StudyInstanceUID that
  ``prepare`` uses (same key file, same name); ``--pseudonym-map FILE`` (outside OUT) links them to the
  studies, only when asked;
- ``OUT/batch_report.json``: per study its pseudonym, status, slices, seconds and, for a failure, the reason
  with the study's folders replaced by "<study folder>" (paths may name patients);
- one broken study fails alone; ``resume`` skips the studies whose folder is already in OUT (each is
  written atomically, so a folder that exists is complete).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import petsynth
from petsynth.data.dicom_index import StudyInfo, scan_dicom
from petsynth.data.prepare import load_key, patient_of, pseudonym, scrub_folders, write_pseudonym_mapping
from petsynth.inference import cached_model, model_name, set_threads
from petsynth.methods.base import MethodError
from petsynth.parallel import run_each
from petsynth.train.checkpoint import CheckpointError
from petsynth.translation import StudyOptions, TranslateError, _model_info, study_inputs, translate_inputs
from petsynth.utils.files import atomic_write_text

REPORT_FILE = "batch_report.json"

@dataclass
class StudyOutcome:
    """One study of a batch (no identifiers): its pseudonym, status ("ok", "failed", "skipped"), slices, seconds
    and the reason of a failure."""

    study: str
    status: str
    slices: int = 0
    seconds: float = 0.0
    reason: str = ""


@dataclass
class ArchiveResult:
    """What :func:`translate_archive` did: the outcome of every study found, and where."""

    out_dir: Path
    studies: list[StudyOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[StudyOutcome]:
        return [s for s in self.studies if s.status == "failed"]


def _folders(study: StudyInfo) -> set[str]:
    return {str(f.parent) for series in study.series for f in series.files}


def _scrub(text: str, study: StudyInfo, archive: Path) -> str:
    """The message with the study's folders (and the archive's) replaced: paths may name patients."""
    return scrub_folders(text, {**dict.fromkeys(_folders(study), "<study folder>"), str(archive): "<archive>"})


def _translate_job(job: tuple[str, StudyInfo], model: str, device: str, archive: Path, out: Path,
                   options: StudyOptions, overwrite: bool) -> StudyOutcome:
    """One study of the archive (run here, in a pool process or on a Dask worker)."""
    name, study = job
    start = time.perf_counter()
    try:
        method = cached_model(model, device)
        inputs = study_inputs(study, method.task, Path(sorted(_folders(study))[0]))
        result = translate_inputs(method, _model_info(method, model), inputs, archive, out / name, options,
                                  overwrite=overwrite)
        return StudyOutcome(name, "ok", slices=result.slices, seconds=round(time.perf_counter() - start, 2))
    except (TranslateError, MethodError, CheckpointError, ValueError, OSError) as err:
        return StudyOutcome(name, "failed", reason=_scrub(f"{type(err).__name__}: {err}", study, archive))


def translate_archive(model: str | Path, archive: str | Path, out: str | Path, options: StudyOptions = StudyOptions(),
                      *, workers: int = 1, dask: str | None = None, device: str = "auto", threads: int | None = None,
                      resume: bool = False, overwrite: bool = False, key_file: str | Path | None = None,
                      key: bytes | None = None, mapping_file: str | Path | None = None,
                      studies: list[StudyInfo] | None = None, progress: Callable[[int, int, str], None] | None = None) -> ArchiveResult:
    """Translate every DICOM study under ``archive`` into ``out/<pseudonym>/`` (see the module docstring).

    ``model``: a model spec (bundled name, run or model folder), loaded in each process that translates.
    ``workers``/``dask``: :func:`petsynth.parallel.run_each`. ``resume``: keep the study folders already in
    ``out`` and translate the others; ``overwrite``: replace them. ``studies``: the archive already scanned
    (:func:`~petsynth.data.dicom_index.scan_dicom`). ``progress(done, total, status)`` after each study."""
    start = time.perf_counter()
    archive, out = Path(archive), Path(out)
    if out.exists() and not (resume or overwrite):
        raise TranslateError(f"{out} exists: choose another --out, or pass --resume (keep its studies) or "
                             "--overwrite")
    if mapping_file is not None:
        mapping_file = Path(mapping_file).resolve()
        if mapping_file.is_relative_to(out.resolve()):
            raise TranslateError(f"{mapping_file}: the pseudonym map identifies patients; write it outside {out}")
    set_threads(threads)
    method = cached_model(str(model), device)  # fails here, before any work, for a bad model
    if studies is None:
        studies, _ = scan_dicom([archive])
    if not studies:
        raise TranslateError(f"{archive}: no DICOM studies found")
    key = key if key is not None else load_key(key_file)
    named = [(pseudonym(key, st.study_uid), st) for st in studies]
    result = ArchiveResult(out_dir=out)
    jobs = []
    for name, study in named:
        if resume and (out / name).is_dir():
            result.studies.append(StudyOutcome(name, "skipped", reason="already in the output (resume)"))
        else:
            jobs.append((name, study))
    out.mkdir(parents=True, exist_ok=True)
    total, done = len(named), len(named) - len(jobs)
    if progress:
        progress(done, total, "starting")
    lost = lambda job, err: StudyOutcome(job[0], "failed",  # noqa: E731
                                         reason=f"the worker running it failed: {type(err).__name__}")
    args = (str(model), device, archive, out, options, overwrite)
    for n, (_, outcome) in enumerate(run_each(_translate_job, jobs, args, workers=workers, dask=dask,
                                              failed=lost, name="translate"), done + 1):
        result.studies.append(outcome)
        if progress:
            progress(n, total, outcome.status)
    if mapping_file is not None:
        rows = []
        for name, st in named:
            patient = patient_of(st.series[0], st.study_uid)
            rows.append((name, st.study_uid, pseudonym(key, patient, prefix="p"), patient))
        write_pseudonym_mapping(mapping_file, rows)
    result.studies.sort(key=lambda s: s.study)
    result.seconds = time.perf_counter() - start
    atomic_write_text(out / REPORT_FILE, json.dumps({
        "petsynth_version": petsynth.__version__, "model": model_name(model), "method": method.name,
        "task": method.task, "studies": [s.__dict__ for s in result.studies],
        "seconds": round(result.seconds, 2)}, indent=1))
    return result
