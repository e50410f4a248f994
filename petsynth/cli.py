"""The ``petsynth`` command line: thin wrappers that parse arguments, call the API and print with rich."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperArgument, TyperCommand

import petsynth
from petsynth.physics.constants import KVP_RANGE
from petsynth.tasks import DEFAULT_TASK, TASK_NAMES, TASKS

app = typer.Typer(
    name="petsynth",
    help="Synthesize quantitative PET (SUV) from CT, MRI or low-dose PET with physics-guided diffusion models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console(stderr=True)

DASK_HELP = ("Run one task per study on a Dask cluster: a scheduler's address (tcp://host:8786; every worker must "
             "see the same paths) or 'local' (a local cluster of --workers processes). Needs "
             "pip install 'petsynth[dask]'.")
DEVICE_HELP = "auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N."

#: How a value is shown in help, by its Python type (the conventional upper-case names).
_VALUE_NAMES = {Path: "PATH", int: "N", float: "X", str: "TEXT"}


def _value_name(param) -> str:
    """PATH, N, X, TEXT (with ... when repeated); "" for a flag."""
    if getattr(param, "is_flag", False):
        return ""
    desc = getattr(param, "type_descriptor", None)
    annotation = getattr(desc, "annotation", None)
    repeated = getattr(desc, "is_list", False) or param.nargs != 1
    if repeated and getattr(annotation, "__args__", None):
        annotation = annotation.__args__[0]
    name = "PATH" if getattr(desc, "is_path", False) else _VALUE_NAMES.get(annotation, "VALUE")
    return name + ("..." if repeated else "")


class _Command(TyperCommand):
    """Conventional help for every command: ``Usage: petsynth prepare [OPTIONS] INPUTS...``, a value name
    (PATH, N, X, TEXT) after each option that takes one, nothing after a flag."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = (param.metavar or param.name.upper()) + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
        return pieces

    def get_params(self, ctx) -> list:
        params = super().get_params(ctx)
        for param in params:
            if isinstance(param, TyperArgument):
                label = _value_name(param)
                param.metavar = param.metavar or param.name.upper()
                param.display_type_rich = lambda ctx=None, _label=label: _label  # noqa: ARG005 (typer's hook)
            elif param.metavar is None:
                param.metavar = _value_name(param)
        return params


def _command(*args, **kwargs):
    return app.command(*args, cls=_Command, **kwargs)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"petsynth {petsynth.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True,
                                           help="Print the version and exit."),
) -> None:
    """petsynth: CT -> PET, MRI -> PET and low-dose -> standard-dose PET, in SUV."""


@_command()
def phantom(
    out: Path = typer.Argument(..., help="Folder to write the studies into (one sub-folder per study)."),
    task: str = typer.Option(DEFAULT_TASK, "--task", help="The task the studies are for: "
                             + "; ".join(f"{t.name} ({t.phantom} phantom: {t.title})" for t in TASKS.values())
                             + "."),
    studies: int = typer.Option(1, "--studies", "-n", min=1, help="Number of studies."),
    seed: int = typer.Option(0, "--seed", help="Seed; study i is determined by (seed, i)."),
    fmt: str = typer.Option("dicom", "--format", help="dicom (series per modality) or nifti (.nii.gz)."),
    preset: str = typer.Option("default", "--preset", help="default (clinical grids), small, or tiny (tests)."),
    dose_fractions: str = typer.Option("1/4,1/10,1/20,1/50,1/100", "--dose-fractions",
                                       help="Low-dose levels for lpet2spet, e.g. '0.25,0.1' or '1/4,1/10'."),
    flavour: Optional[str] = typer.Option(None, "--flavour", help="Scanner header style: ge, siemens or "
                                          "philips (default: drawn per study)."),
    start_index: int = typer.Option(0, "--start-index", min=0, help="Index of the first study."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace study folders that exist."),
    field: str = typer.Option("3", "--field", help="mr2pet: MR field strength(s) in tesla (0.5-11.7), e.g. "
                              "'1.5,3,5,7': each subject is written once per field as <study>-<f>T (same PET and "
                              "patient). Default 3 (one study per subject)."),
    pattern: Optional[str] = typer.Option(None, "--pattern", help="mr2pet: FDG hypometabolism: hc (none), ad "
                                          "(bilateral temporoparietal and posterior cingulate), frontal, parietal, "
                                          "temporal or occipital (one lobe). Default: one random lobe in 60 % of "
                                          "subjects."),
    displace_pet: bool = typer.Option(False, "--displace-pet", help="mr2pet: move the head in the PET by a random "
                                      "rigid transform (rotation up to 10 degrees, shift up to 20 mm) and write "
                                      "it as a separate study 1-60 days after the MR (truth.json pet_frame)."),
    arms: Optional[str] = typer.Option(None, "--arms", help="ct2pet/lpet2spet: raised (out of the field of view), "
                                       "sides (along the trunk, inside the PET and CT fields of view) or random "
                                       "(sides with probability 0.35). Default random."),
    contrast: Optional[str] = typer.Option(None, "--contrast", help="ct2pet/lpet2spet: none, venous (portal-venous "
                                           "iodine-enhanced CT; the attenuation map still comes from the unenhanced "
                                           "CT numbers) or random (venous with probability 0.5). Default none."),
) -> None:
    """Write digital phantom studies (CT/PET, MR/PET or low-dose PET) with their ground truth."""

    from petsynth import phantom as ph

    if task not in ph.TASKS:
        raise typer.BadParameter(f"{task!r}; choose one of {', '.join(ph.TASKS)}", param_hint="--task")
    if fmt not in ph.FORMATS:
        raise typer.BadParameter(f"{fmt!r}; choose one of {', '.join(ph.FORMATS)}", param_hint="--format")
    if preset not in ph.PRESETS:
        raise typer.BadParameter(f"{preset!r}; choose one of {', '.join(ph.PRESETS)}", param_hint="--preset")
    if flavour is not None and flavour not in ph.FLAVOURS:
        raise typer.BadParameter(f"{flavour!r}; choose one of {', '.join(ph.FLAVOURS)}", param_hint="--flavour")
    try:
        fractions = ph.parse_dose_fractions(dose_fractions)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--dose-fractions") from None
    try:
        fields = ph.parse_fields(field)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--field") from None
    if pattern is not None and pattern not in ph.PATTERNS:
        raise typer.BadParameter(f"{pattern!r}; choose one of {', '.join(ph.PATTERNS)}", param_hint="--pattern")
    if arms is not None and arms not in ph.ARMS_CHOICES:
        raise typer.BadParameter(f"{arms!r}; choose one of {', '.join(ph.ARMS_CHOICES)}", param_hint="--arms")
    if contrast is not None and contrast not in ph.CONTRAST_CHOICES:
        raise typer.BadParameter(f"{contrast!r}; choose one of {', '.join(ph.CONTRAST_CHOICES)}",
                                 param_hint="--contrast")

    with _progress(remaining=False) as bar:
        job = bar.add_task(f"{task} phantoms", total=studies)

        def advance(done: int, total: int, study_id: str) -> None:
            bar.update(job, completed=done, description=f"{task} {study_id}")

        try:
            paths = ph.write_studies(out, task=task, studies=studies, seed=seed, fmt=fmt, preset=preset,
                                     dose_fractions=fractions, flavour=flavour, start_index=start_index,
                                     overwrite=overwrite, progress=advance, fields=fields, pattern=pattern,
                                     pet_displacement="random" if displace_pet else None, arms=arms,
                                     contrast=contrast)
        except (FileExistsError, ValueError, OSError) as err:
            _error(err)
            raise typer.Exit(code=1) from None
    console.print(f"[green]wrote {len(paths)} {task} {fmt} stud{'y' if len(paths) == 1 else 'ies'}[/green] "
                  f"to {out} (truth in each study's truth/ folder; index in {out / 'phantoms.json'})")


def _progress(info: bool = False, remaining: bool = True):
    """The commands' progress bar on stderr: description, bar, done/total, [info field], elapsed[, remaining]."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    columns += [TextColumn("{task.fields[info]}")] if info else []
    columns += [TimeElapsedColumn()] + ([TimeRemainingColumn()] if remaining else [])
    return Progress(*columns, console=console)


def _marked(label: str, message: object) -> None:
    """``LABEL MESSAGE`` with the label in red, on one line however long (paths), the message taken as plain
    text (never as markup)."""
    console.print(Text.assemble((label, "red"), f" {message}"), soft_wrap=True)


def _error(message: object) -> None:
    """``error: MESSAGE`` (:func:`_marked`)."""
    _marked("error:", message)


def _count(n: int, singular: str, plural: str | None = None) -> str:
    """ "1 study", "2 studies", "0 files"."""
    return f"{n} {singular if n == 1 else (plural or singular + 's')}"


def _tables_that_fit(width: int, title: str, keys: list[str], key_rows: list[list[str]],
                     columns: list[tuple[str, list[str]]]) -> list:
    """Rich tables of ``key_rows`` (left columns ``keys``) and the value ``columns`` (header, cells), as many
    value columns per table as ``width`` holds without cutting a cell (each table repeats the key columns)."""
    from rich.table import Table

    def text_width(values: list[str]) -> int:
        return max(len(v) for v in values)

    key_width = sum(text_width([k, *(row[n] for row in key_rows)]) + 3 for n, k in enumerate(keys)) + 1
    groups: list[list[tuple[str, list[str]]]] = [[]]
    used = key_width
    for header, cells in columns:
        need = max(text_width(cells), min(len(header), 12)) + 3
        if groups[-1] and used + need > width:
            groups.append([])
            used = key_width
        groups[-1].append((header, cells))
        used += need
    tables = []
    for n, group in enumerate(groups):
        table = Table(title=title if n == 0 else None)
        for k in keys:
            table.add_column(k, overflow="fold")
        for header, _ in group:
            table.add_column(header, justify="right", overflow="fold")
        for r, row in enumerate(key_rows):
            table.add_row(*row, *(cells[r] for _, cells in group))
        tables.append(table)
    return tables


def _set_threads(threads: int | None) -> None:
    """torch's CPU threads (None: chosen from the idle cores), the choice's note printed as a warning."""
    import warnings

    from petsynth.inference import set_threads

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        set_threads(threads)
    _print_warnings(caught)


def _phantoms_only(model: str) -> None:
    """The warning that a bundled model knows phantoms only, when ``model`` names one."""
    from petsynth.inference import PHANTOMS_ONLY_NOTICE, bundled_models

    if model in bundled_models():
        console.print(f"[yellow]{PHANTOMS_ONLY_NOTICE.format(name=model)}[/yellow]")


def _print_warnings(caught: list) -> None:
    """Each distinct warning once, with how often it came (a library warns once per file of a series)."""
    counts: dict[str, int] = {}
    for w in caught:
        counts[str(w.message)] = counts.get(str(w.message), 0) + 1
    for message, n in counts.items():
        console.print(f"[yellow]warning:[/yellow] {message}" + (f" [dim]({n} times)[/dim]" if n > 1 else ""))


def _parse_range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    lo_i, hi_i = int(lo), int(hi or lo)
    if not 0 < lo_i <= hi_i:
        raise ValueError
    return lo_i, hi_i


@_command()
def prepare(
    inputs: list[Path] = typer.Argument(..., help="Folders (searched recursively) or files with DICOM studies."),
    out: Path = typer.Option(..., "--out", "-o", help="Dataset folder to create (or continue with --resume)."),
    task: str = typer.Option(DEFAULT_TASK, "--task", help="The task: " + ", ".join(TASK_NAMES) + "."),
    size: int = typer.Option(256, "--size", min=8, help="Output slice size in pixels (square)."),
    workers: int = typer.Option(1, "--workers", "-j", min=1, help="Studies prepared in parallel (processes; with "
                                "--dask local, the local cluster's workers)."),
    dask: Optional[str] = typer.Option(None, "--dask", help=DASK_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue a dataset: skip the studies it already has."),
    split: str = typer.Option("0.8,0.1,0.1", "--split", help="Train,val,test fractions, by patient."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split and of slice sampling."),
    slices_per_study: Optional[str] = typer.Option(None, "--slices-per-study", help="Keep a contiguous run "
                                                   "of N slices per study, N drawn from a range like 25-30 "
                                                   "(the CPDM experiment); default: all slices."),
    key_file: Optional[Path] = typer.Option(None, "--key-file", help="Secret key for study pseudonyms "
                                            "(default ~/.petsynth/pseudonym.key, created on first use; "
                                            "keep it outside the dataset)."),
    pseudonym_map: Optional[Path] = typer.Option(None, "--pseudonym-map", help="Also write a CSV linking each "
                                                 "study pseudonym to its StudyInstanceUID and patient id (it "
                                                 "identifies patients: must lie outside the dataset)."),
    min_coverage: float = typer.Option(0.0, "--min-coverage", min=0.0, max=1.0, help="Drop the pairs whose "
                                       "source (CT, MR) covers less than this fraction of the PET slice's area "
                                       "(e.g. 0.5; default 0 keeps all, and studies with pairs under 50% are "
                                       "named)."),
    standard_dose_only: bool = typer.Option(False, "--standard-dose-only", help="lpet2spet: keep each study's "
                                            "standard-dose PET and CT only, no low-dose images (what upete "
                                            "trains on; one PET series per study is enough)."),
    register: str = typer.Option("rigid", "--register", help="mr2pet: 'rigid' registers the PET to the MR (mutual "
                                 "information) when they come from different studies, frames of reference or "
                                 "NIfTI files; 'none' trusts the headers."),
    brain_mask: str = typer.Option("auto", "--brain-mask", help="mr2pet: 'auto' (skull stripping of the T1w MR, no "
                                   "downloaded weights), 'none', or the file name of a mask beside each study's "
                                   "images; MR and PET are set to 0 outside it."),
    planes: str = typer.Option("axial", "--planes", help="mr2pet: planes to slice, e.g. axial,coronal,sagittal."),
    slice_range: Optional[str] = typer.Option(None, "--slice-range", help="mr2pet: slice index ranges per plane of "
                                              "the cube, inclusive, e.g. axial=30:60,coronal=40:70 (default: every "
                                              "slice that holds brain)."),
    fov_mm: float = typer.Option(220.0, "--fov-mm", min=1.0, help="mr2pet: side of the cube the slices are cut from, "
                                 "mm, centred on the brain (pixel spacing = fov / size)."),
    pet_normalise: str = typer.Option("auto", "--pet-normalise", help="mr2pet: PET units: 'suv' (headers), "
                                      "'global' (SUVR to the whole-brain mean), 'auto' (SUV where the inputs allow, "
                                      "else global), 'none' (as read)."),
    max_gap_days: float = typer.Option(365.0, "--max-gap-days", min=0.0, help="mr2pet: largest time between an MR "
                                       "and a PET of one patient in different DICOM studies for them to be paired."),
) -> None:
    """Prepare raw DICOM studies into a paired, split dataset in physical units (HU, SUV).

    mr2pet (brain PET/MR as users have it): the PET is registered to the MR, both are brain-masked, and slices of
    the chosen planes are cut from a cube of the MR's space (see the --register, --brain-mask, --planes,
    --slice-range, --fov-mm, --pet-normalise and --max-gap-days options).

    Exits with 1 when any study failed; the good ones are kept. The per-study report is
    DATASET/prepare_report.json (pseudonyms only)."""

    from petsynth.data.prepare import LOW_COVERAGE, prepare_dataset
    from petsynth.parallel import ClusterError
    from petsynth.data.store import DatasetError, DatasetExistsError

    if task not in TASK_NAMES:
        raise typer.BadParameter(f"{task!r}; choose one of {', '.join(TASK_NAMES)}", param_hint="--task")
    try:
        fractions = tuple(float(v) for v in split.split(","))
    except ValueError:
        raise typer.BadParameter(f"{split!r} is not three comma-separated numbers", param_hint="--split") from None
    brain = None
    if task == "mr2pet":
        from petsynth.data.brain import BrainOptions, parse_planes, parse_slice_ranges

        try:
            brain = BrainOptions(register=register, brain_mask=brain_mask, planes=parse_planes(planes),
                                 slice_ranges=parse_slice_ranges(slice_range), fov_mm=fov_mm,
                                 pet_normalise=pet_normalise, max_gap_days=max_gap_days)
        except ValueError as err:
            raise typer.BadParameter(str(err)) from None
    per_study = None
    if slices_per_study is not None:
        try:
            per_study = _parse_range(slices_per_study)
        except ValueError:
            raise typer.BadParameter(f"{slices_per_study!r}; use N or LO-HI", param_hint="--slices-per-study") \
                from None
    with _progress(remaining=False) as bar:
        job = bar.add_task("scanning", total=None)

        def advance(done: int, total: int, status: str) -> None:
            bar.update(job, completed=done, total=total,
                       description="scanning files" if status == "scanning" else f"preparing ({status})")

        try:
            report = prepare_dataset(inputs, out, task, size=size, workers=workers, resume=resume,
                                     key_file=key_file, split=fractions, seed=seed, slices_per_study=per_study,
                                     min_coverage=min_coverage, mapping_file=pseudonym_map, dask=dask,
                                     standard_dose_only=standard_dose_only, brain=brain, progress=advance)
        except DatasetExistsError:
            bar.remove_task(job)
            _error(f"{out} already holds a dataset: continue it with --resume, or choose a new --out")
            raise typer.Exit(code=1) from None
        except (DatasetError, ValueError, ClusterError, OSError) as err:
            bar.remove_task(job)
            _error(err)
            raise typer.Exit(code=1) from None
    counts = {k: sum(r.status == k for r in report.results) for k in ("ok", "skipped", "failed")}
    slices = sum(r.slices for r in report.results)
    console.print(f"{_count(len(report.results), 'study', 'studies')} found: {counts['ok']} prepared "
                  f"({_count(slices, 'slice pair')}), {counts['skipped']} already present, {counts['failed']} "
                  f"failed; {_count(len(report.skipped_files), 'file')} ignored. Dataset: {out}")
    for r in report.failed:
        _marked("failed", f"{r.study}: {r.reason}")
    for r in report.results:
        if r.low_coverage:
            console.print(f"[yellow]coverage[/yellow] {r.study}: {r.low_coverage} of {r.slices} pairs have a source "
                          f"covering less than {LOW_COVERAGE:.0%} of the PET slice (down to {r.least_coverage:.0%}); "
                          "the rest of them is air. --min-coverage 0.5 drops such pairs")
        if r.dropped_coverage:
            console.print(f"[dim]{r.study}: {_count(r.dropped_coverage, 'pair')} under --min-coverage "
                          f"{min_coverage:g} dropped[/dim]")
        if r.registration and r.status == "ok":
            reg, move = r.registration, r.registration.get("transform", {})
            dice = reg.get("mask_dice")
            console.print(f"[dim]{r.study}: PET registered to the MR: rotation {move.get('rotation_deg', 0):.2f} deg, "
                          f"shift {sum(v * v for v in move.get('translation_mm', [0, 0, 0])) ** 0.5:.1f} mm"
                          + (f", brain mask Dice {dice:.3f}" if dice is not None else "")
                          + f", {reg.get('seconds', 0):.1f} s[/dim]")
    for path, reason in report.skipped_files[:20]:
        console.print(f"[dim]ignored {path}: {reason}[/dim]")
    if len(report.skipped_files) > 20:
        console.print(f"[dim]... and {len(report.skipped_files) - 20} more ignored files[/dim]")
    if report.failed:
        raise typer.Exit(code=1)


def _parse_overrides(items: list[str], param_hint: str = "--set", example: str = "train.steps=100") -> dict:
    """KEY=VALUE items -> {KEY: VALUE}, values read as YAML (numbers, booleans, lists)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r}; use KEY=VALUE, e.g. {example}", param_hint=param_hint)
        out[key.strip()] = yaml.safe_load(value)
    return out




def _device(text: str) -> str | None:
    """The --device value as the API takes it (None: auto), checked."""
    if text == "auto":
        return None
    if text == "cpu" or text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise typer.BadParameter(f"{text!r}; use auto, cpu, cuda or cuda:N", param_hint="--device")


SAMPLER_OPTION_HELP = ("Sampler option KEY=VALUE of diffusion models, repeatable (e.g. snr=0.16); "
                       "`petsynth methods` lists each method's options. An option the model lacks is an error.")


@_command()
def train(
    method: str = typer.Argument(..., help="Method name (`petsynth methods` lists them)."),
    data: Path = typer.Argument(..., help="Prepared dataset folder (from `petsynth prepare`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: checkpoints, logs, curves, model/."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML with method_config: and train: "
                                          "sections."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Optimiser steps (train.steps)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", min=1, help="Slices per step."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default: the method's)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 or bf16 (autocast)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="DataLoader worker processes."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    autoencoder: Optional[Path] = typer.Option(None, "--autoencoder", help="cpdm/bbdm: a trained vqgan model "
                                               "folder (RUN/model)."),
    segmenter: Optional[Path] = typer.Option(None, "--segmenter", help="cpdm: a trained attention model folder."),
    overrides: list[str] = typer.Option([], "--set", help="KEY=VALUE override, repeatable, e.g. "
                                        "--set method_config.denoiser.channels=[64,128,256]."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
) -> None:
    """Train a method on a prepared dataset (one trainer for all methods; torchrun for several processes).

    CPDM is trained in three runs: `train vqgan`, `train attention`, then `train cpdm --autoencoder
    RUN1/model --segmenter RUN2/model`. The trained model is OUT/model."""

    from petsynth.config import ConfigError
    from petsynth.methods.base import MethodError
    from petsynth.train.checkpoint import CheckpointError
    from petsynth.train.trainer import TrainError, make_run_config, train as run_training

    sets = _parse_overrides(overrides)
    for key, value in (("train.steps", steps), ("train.batch_size", batch_size), ("train.lr", lr),
                       ("train.precision", precision), ("train.num_workers", workers), ("train.threads", threads),
                       ("method_config.autoencoder_checkpoint", autoencoder and str(autoencoder)),
                       ("method_config.segmenter_checkpoint", segmenter and str(segmenter))):
        if value is not None:
            sets[key] = value
    try:
        run = make_run_config(method, data, config_file=config, overrides=sets)
        with _progress(info=True) as bar:
            job = bar.add_task(f"train {method}", total=run.train.steps, info="")

            def advance(step: int, total: int, logged: dict) -> None:
                info = " ".join(f"{k} {v:.4g}" for k, v in logged.items() if k.endswith("loss"))
                if "sec_per_step" in logged:
                    info += f" {1.0 / max(logged['sec_per_step'], 1e-9):.2f} it/s"
                bar.update(job, completed=step, info=info)

            model = run_training(run, out, resume=resume, progress=advance, device=_device(device))
    except (TrainError, ConfigError, MethodError, CheckpointError, OSError) as err:
        _error(err)
        raise typer.Exit(code=1) from None
    console.print(f"trained {method}: model in {model}; curves in {out / 'curves.png'}")


@_command()
def evaluate(
    models: list[str] = typer.Argument(..., help="Models to compare: run folders, model folders (RUN/model) or "
                                       "bundled model names (phantom-cpdm, phantom-unet)."),
    data: Path = typer.Option(..., "--data", "-d", help="Prepared dataset folder (from `petsynth prepare`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for metrics.csv, per_slice.csv, table.md, "
                             "figure.png and evaluation.json."),
    split: str = typer.Option("test", "--split", help="train, val, test or all."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Sampling steps of diffusion models "
                                        "(default: each model's)."),
    eta: Optional[float] = typer.Option(None, "--eta", min=0.0, max=1.0, help="Sampler stochasticity of "
                                        "diffusion models (0: deterministic; default: each model's)."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1, help="Slices per batch."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    workers: int = typer.Option(1, "--workers", "-j", min=1, help="Processes predicting in parallel, one study "
                                "per task (with --dask local, the local cluster's workers)."),
    dask: Optional[str] = typer.Option(None, "--dask", help=DASK_HELP),
    max_slices: Optional[int] = typer.Option(None, "--max-slices", min=1, help="Evaluate this many evenly "
                                             "spaced slices of the split (the same for every model)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads."),
    bf16: bool = typer.Option(False, "--bf16", help="bf16 autocast."),
    seed: int = typer.Option(0, "--seed", help="Seed of the samplers' noise."),
    sampler_options: list[str] = typer.Option([], "--sampler-option", help=SAMPLER_OPTION_HELP),
    brain_reference: str = typer.Option("cerebellum", "--brain-reference", help="mr2pet: the SUVR reference region "
                                        "of the brain measures (brain.csv): cerebellum or pons."),
    hot_spot_suv: float = typer.Option(4.0, "--hot-spot-suv", help="SUV threshold of the "
                                       "false-positive hot spots (hot_spots.csv): components of the prediction "
                                       "above it outside labelled uptake."),
) -> None:
    """Score models on a dataset split against the real PET (and the phantom truth): a CSV, a Markdown table
    like the CPDM paper's Table 4, and an error-map figure like its Figure 3. mr2pet datasets also get the
    metrics per plane and the brain measures (SUVR, grey/white matter, hypometabolic contrast) in brain.csv."""
    import warnings


    from petsynth.data.store import DatasetError
    from petsynth.evaluate import EvaluationError, evaluate as run_evaluation
    from petsynth.parallel import ClusterError
    from petsynth.inference import PredictOptions
    from petsynth.methods.base import MethodError
    from petsynth.train.checkpoint import CheckpointError

    _set_threads(threads)
    extra = _parse_overrides(sampler_options, "--sampler-option", "snr=0.16")
    options = PredictOptions(steps=steps, eta=eta, batch_size=batch_size, bf16=bf16, seed=seed, sampler=extra)
    try:
        with _progress() as bar:
            jobs: dict[str, int] = {}

            def advance(name: str, done: int, total: int) -> None:
                if name not in jobs:
                    jobs[name] = bar.add_task(f"evaluate {name}", total=total)
                bar.update(jobs[name], completed=done, total=total)

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                report = run_evaluation(models, data, out, split=split, options=options, max_slices=max_slices,
                                        progress=advance, device=_device(device), workers=workers,
                                        dask=dask, brain_reference=brain_reference, hot_spot_suv=hot_spot_suv)
    except (EvaluationError, DatasetError, MethodError, CheckpointError, ClusterError, OSError) as err:
        _error(err)
        raise typer.Exit(code=1) from None
    n_studies = len(report.studies)
    title = (f"{report.split}: {_count(report.slices, 'slice')} of {_count(n_studies, 'study', 'studies')} "
             f"({report.seconds:.0f} s); means over slices")
    out = Console()
    for table in _tables_that_fit(out.width, title, ["model", "ref"],
                                  [[model, ref] for model in report.models for ref in report.references],
                                  [(s.label + (" (paper)" if s.convention == "cpdm" else ""),
                                    [f"{report.overall[m][r][s.key]:.{s.digits}f}"
                                     for m in report.models for r in report.references]) for s in report.metrics]):
        out.print(table)
    _print_lesion_summary(out, report)
    _print_warnings(caught)
    from petsynth.inference import PHANTOMS_ONLY_NOTICE

    bundled = {PHANTOMS_ONLY_NOTICE.format(name=m) for m in report.models}
    for note in report.notes:
        console.print(f"[yellow]{note}[/yellow]" if note in bundled else f"[dim]{note}[/dim]")
    for name, path in report.files.items():
        Console().print(f"{name:>10}: {path}")


def _print_lesion_summary(out: Console, report) -> None:
    """evaluate: the lesion SUVmax recovery per class and the false-positive hot spots, one line per model."""
    for model, per_ref in report.lesion_classes.items():
        for ref, classes in per_ref.items():
            parts = [f"{c} {v['mean_recovery']:.2f} (n={v['count']}, {100 * v['within_tolerance']:.0f}% ±30%)"
                     for c, v in classes.items()]
            out.print(f"lesion SUVmax recovery, {model} vs {ref}: " + "; ".join(parts))
    hot = report.hot_spots
    if hot:
        counts = ", ".join(f"{m} {v['total']}" for m, v in hot["per_model"].items())
        out.print(f"false-positive hot spots > {hot['threshold_suv']:g} SUV (vs {hot['reference']}): {counts}")


@_command()
def methods() -> None:
    """List the available methods, the tasks each can be trained for and their sampler options."""
    from petsynth.methods.base import available_methods, method_class

    for name in available_methods():
        cls = method_class(name)
        options = ", ".join(cls.sampler_option_names())
        console.print(f"[bold]{name}[/bold] ({', '.join(cls.tasks)}): {cls.summary}"
                      + (f" [dim](sampler options: {options})[/dim]" if options else ""))


@_command()
def translate(
    model: str = typer.Argument(..., help="A trained model: run folder, RUN/model folder, checkpoint folder, or "
                                "a bundled one: 'phantom-cpdm' or 'phantom-unet' (phantoms only)."),
    input: Path = typer.Argument(..., help="What the model's task reads: " + "; ".join(
        f"for {t.name}, {t.translate_reads}" for t in TASKS.values()) + "; or a prepared dataset of its task."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder to create (NIfTI, DICOM series, JSON)."),
    ct: Optional[Path] = typer.Option(None, "--ct", help="The guidance CT (NIfTI, HU) beside a NIfTI input, for "
                                      "tasks that read one: " + ", ".join(
                                          t.name for t in TASKS.values() if t.guidance_modality) + "."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Sampling steps of diffusion models "
                                        "(default: the model's, 10 for CPDM)."),
    eta: Optional[float] = typer.Option(None, "--eta", min=0.0, max=1.0, help="0: deterministic sampler; "
                                        "1: CPDM's Algorithm 2 (stochastic)."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1, help="Slices per forward pass."),
    bf16: bool = typer.Option(False, "--bf16", help="bf16 autocast (fast on GPUs; slow on most CPUs)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads (default: torch's)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    kvp: Optional[float] = typer.Option(None, "--kvp", min=KVP_RANGE[0], max=KVP_RANGE[1], help="Tube voltage "
                                        f"(kV, {KVP_RANGE[0]:g}..{KVP_RANGE[1]:g}: the range of the HU -> mu "
                                        "tables) for the attenuation map when the CT gives none (NIfTI); "
                                        "default 120."),
    spacing: Optional[float] = typer.Option(None, "--spacing", help="In-plane output pixel spacing in mm "
                                            "(default: the spacing the model was trained at)."),
    split: str = typer.Option("test", "--split", help="Dataset inputs: train, val or test."),
    dicom: bool = typer.Option(True, "--dicom/--no-dicom", help="Also write the synthetic PET as a DICOM series."),
    png: bool = typer.Option(False, "--png", help="Also write PNGs: a few slices, a coronal MIP and fused "
                             "PET/CT (or PET/MR) slices with an SUV legend (OUT/panels/)."),
    report: bool = typer.Option(False, "--report", help="Also write OUT/report.html: MIPs, a slice viewer and the "
                                "model's facts in one file that opens from disk (no network)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampler's noise (stochastic samplers)."),
    sampler_options: list[str] = typer.Option([], "--sampler-option", help=SAMPLER_OPTION_HELP),
    mask_body: bool = typer.Option(True, "--mask-body/--no-mask-body", help="SUV 0 outside the body (CT > -500 "
                                   "HU where the task has a CT, else the MR above a tenth of its 99th "
                                   "percentile; holes filled, + 10 mm); --no-mask-body keeps the raw output."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
    workers: int = typer.Option(1, "--workers", "-j", min=1, help="Archive: studies translated in parallel "
                                "(processes; with --dask local, the local cluster's workers)."),
    dask: Optional[str] = typer.Option(None, "--dask", help="Archive: " + DASK_HELP),
    resume: bool = typer.Option(False, "--resume", help="Archive: keep the studies already in --out, translate "
                                "the others."),
    key_file: Optional[Path] = typer.Option(None, "--key-file", help="Archive: secret key of the study pseudonyms "
                                            "(prepare's; default ~/.petsynth/pseudonym.key)."),
    pseudonym_map: Optional[Path] = typer.Option(None, "--pseudonym-map", help="Archive: also write a CSV linking "
                                                 "each output folder to its study (it identifies patients: "
                                                 "outside --out)."),
) -> None:
    """Translate a CT, an MR or a low-dose PET (+ its CT), as the model's task reads, into synthetic PET in SUV.

    Writes OUT/synthetic_pet.nii.gz (it overlays the source in a viewer), OUT/dicom/ (a PET series in the
    source's study, Units GML, marked synthetic and not for diagnosis), OUT/translate.json, and with --png
    panels. A model of another task than the input's is refused. A folder holding several DICOM studies is an
    archive: each study goes to OUT/<pseudonym>/, with OUT/batch_report.json."""
    import warnings

    studies = _studies_of_archive(input) if input.is_dir() else None
    if studies:
        if ct is not None:
            raise typer.BadParameter("an archive's CTs come from its studies; --ct goes with a NIfTI input",
                                     param_hint="--ct")
        _translate_archive(model, input, out, studies=studies, steps=steps, eta=eta, batch_size=batch_size, bf16=bf16,
                           sampler=_parse_overrides(sampler_options, "--sampler-option", "snr=0.16"), kvp=kvp,
                           spacing_mm=spacing, write_dicom=dicom, png=png, report=report, seed=seed,
                           mask_body=mask_body, workers=workers, dask=dask, device=_device(device) or "auto",
                           threads=threads, resume=resume, overwrite=overwrite, key_file=key_file,
                           mapping_file=pseudonym_map)
        return


    from petsynth.methods.base import MethodError
    from petsynth.train.checkpoint import CheckpointError
    from petsynth.translation import TranslateError, translate as run_translate

    try:
        with _progress() as bar, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            job = bar.add_task("translate", total=None)

            def advance(done: int, total: int) -> None:
                bar.update(job, completed=done, total=total, description="translating slices")

            result = run_translate(model, input, out, ct=ct, steps=steps, eta=eta, batch_size=batch_size,
                                   sampler=_parse_overrides(sampler_options, "--sampler-option", "snr=0.16"),
                                   bf16=bf16, threads=threads, kvp=kvp, spacing_mm=spacing, split=split, write_dicom=dicom,
                                   png=png, report=report, seed=seed, overwrite=overwrite, mask_body=mask_body,
                                   device=_device(device) or "auto",
                                   progress=advance,
                                   say=lambda msg: bar.update(job, description=msg))
        _print_warnings(caught)
    except (TranslateError, MethodError, CheckpointError, ValueError, OSError) as err:
        _error(err)
        raise typer.Exit(code=1) from None
    console.print(f"translated {result.slices} slices in {result.seconds:.1f} s "
                  f"({result.seconds / max(result.slices, 1):.3f} s/slice) into {result.out_dir}")
    for name, path in result.files.items():
        Console().print(f"{name:>10}: {path}")
    _phantoms_only(str(result.info.get("model", {}).get("name")))


def _studies_of_archive(folder: Path) -> list | None:
    """The DICOM studies under ``folder`` when it holds more than one (an archive), else None (a study folder
    or a prepared dataset: translate reads those itself)."""
    from petsynth.data.dicom_index import scan_dicom
    from petsynth.data.store import DATASET_FILE

    if (folder / DATASET_FILE).is_file():
        return None
    studies, _ = scan_dicom([folder])
    return studies if len(studies) > 1 else None


def _translate_archive(model: str, archive: Path, out: Path, *, studies: list, workers: int, dask: Optional[str],
                       device: str,
                       threads: Optional[int], resume: bool, overwrite: bool, key_file: Optional[Path],
                       mapping_file: Optional[Path], **options) -> None:
    """``translate`` of a folder of studies (petsynth.archive), with a bar over the studies."""
    import warnings


    from petsynth.archive import translate_archive
    from petsynth.methods.base import MethodError
    from petsynth.parallel import ClusterError
    from petsynth.train.checkpoint import CheckpointError
    from petsynth.translation import StudyOptions, TranslateError

    try:
        with _progress() as bar, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            job = bar.add_task("translating studies", total=None)
            result = translate_archive(
                model, archive, out, StudyOptions(**options), workers=workers, dask=dask, device=device,
                threads=threads, resume=resume, overwrite=overwrite, key_file=key_file, mapping_file=mapping_file,
                studies=studies,
                progress=lambda done, total, status: bar.update(job, completed=done, total=total,
                                                                description=f"translating studies ({status})"))
        _print_warnings(caught)
    except (TranslateError, MethodError, CheckpointError, ValueError, ClusterError, OSError) as err:
        _error(err)
        raise typer.Exit(code=1) from None
    counts = {k: sum(s.status == k for s in result.studies) for k in ("ok", "skipped", "failed")}
    console.print(f"{_count(len(result.studies), 'study', 'studies')} found: {counts['ok']} translated "
                  f"({_count(sum(s.slices for s in result.studies), 'slice')}), {counts['skipped']} already in "
                  f"{out}, {counts['failed']} failed, in {result.seconds:.1f} s. Report: {out / 'batch_report.json'}")
    for s in result.failed:
        _marked("failed", f"{s.study}: {s.reason}")
    _phantoms_only(model)
    if result.failed:
        raise typer.Exit(code=1)


@_command()
def bench(
    model: str = typer.Option("phantom-cpdm", "--model", help="Model to time (default: the bundled one)."),
    steps: str = typer.Option("1,5,10,20", "--steps", help="Comma-separated sampling step counts."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1, help="Slices per forward pass."),
    slices: int = typer.Option(32, "--slices", min=1, help="Slices timed per step count."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads (default: torch's)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    bf16: bool = typer.Option(False, "--bf16", help="bf16 autocast."),
    prepare_studies: int = typer.Option(1, "--prepare-studies", min=0, help="Phantom studies for the prepare "
                                        "timing (0: skip it)."),
    study: bool = typer.Option(True, "--study/--no-study", help="Also time one whole translate of a phantom "
                               "DICOM study, end to end."),
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="Folder for the phantom studies (reused)."),
) -> None:
    """Measure on this machine: translate slices/s and seconds per 250-slice study at several step counts,
    peak memory, and prepare pairs/s next to the pydicom floor. Prints a table; asserts nothing."""
    import torch
    from rich.table import Table

    from petsynth import bench as b

    try:
        step_list = [int(v) for v in steps.split(",")]
    except ValueError:
        raise typer.BadParameter(f"{steps!r}; use e.g. 1,5,10", param_hint="--steps") from None
    _set_threads(threads)
    device = _device(device) or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Console()
    out.print(f"machine: {b.machine()}")
    with console.status("bench") as status:
        say = lambda msg: status.update(f"bench: {msg}")  # noqa: E731
        rows = b.translate_speed(model, step_list, batch_size=batch_size, slices=slices, device=device,
                                 bf16=bf16, say=say)
        whole = b.study_translate_time(model, workdir=workdir, say=say) if study else None
        peak = b.peak_rss_mb()
        gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
        prep = b.prepare_speed(prepare_studies, workdir=workdir, say=say) if prepare_studies else None
    table = Table(title=f"translate: {model}, batch {batch_size}, {'bf16' if bf16 else 'fp32'}, {device}")
    for name in ("steps", "slices/s", f"s per {b.STUDY_SLICES}-slice study"):
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row(str(r.steps), f"{r.slices_per_s:.2f}", f"{r.seconds_per_study:.1f}")
    out.print(table)
    if whole:
        out.print(f"whole translate of a phantom DICOM study (read, resample, translate, write NIfTI + DICOM; "
                  f"default steps): {whole[0]} slices in {whole[1]:.1f} s = {whole[1] / whole[0]:.3f} s/slice")
    out.print(f"peak memory (translate): {peak:.0f} MB resident" +
              (f", {gpu_peak:.0f} MB GPU" if gpu_peak is not None else ""))
    if prep:
        out.print(f"prepare (1 worker, {prepare_studies} GE-like phantom studies, {prep.files} files, 256x256): "
                  f"{prep.pairs} pairs in {prep.seconds:.1f} s = {prep.pairs_per_s:.1f} pairs/s; pydicom floor "
                  f"{prep.floor_pairs_per_s:.1f} pairs/s (ratio {prep.ratio:.2f}; best of {len(prep.run_seconds)})")
        out.print(f"peak memory (after prepare): {b.peak_rss_mb():.0f} MB resident")


@_command()
def demo(
    out: Path = typer.Option(Path("demo-output"), "--out", "-o", help="Folder to write into (replaced files "
                             "inside it are overwritten)."),
    seed: int = typer.Option(0, "--seed", help="Phantom seed."),
    preset: str = typer.Option("small", "--preset", help="Phantom size: small (default), default or tiny."),
    model: str = typer.Option("phantom-cpdm", "--model", help="The ct2pet model (default: the bundled one)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Sampling steps (default: the model's)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads."),
) -> None:
    """The embedded default: a phantom PET/CT study, its CT translated to PET by the bundled CPDM, metrics
    against the phantom's noise-free truth, NIfTI, DICOM and a PNG panel. No data, no download."""
    from rich.table import Table

    from petsynth.demo import organ_rich_tables, run_demo
    from petsynth.methods.base import MethodError
    from petsynth.train.checkpoint import CheckpointError
    from petsynth.translation import TranslateError

    import warnings

    try:
        with console.status("demo") as status, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = run_demo(out, seed=seed, preset=preset, model=model, steps=steps, threads=threads,
                              progress=lambda msg: status.update(f"demo: {msg}"))
    except (TranslateError, MethodError, CheckpointError, ValueError, OSError) as err:
        _error(err)
        raise typer.Exit(code=1) from None
    _print_warnings(caught)
    table = Table(title=f"petsynth demo ({report.seconds:.0f} s, translation {report.translate_seconds:.0f} s): "
                        "scores against the phantom's noise-free truth")
    table.add_column("metric")
    table.add_column(f"synthetic PET ({model})", justify="right")
    table.add_column("scanner PET (simulated)", justify="right")
    for name, value in report.metrics.items():
        ref = report.reference.get(name, "")
        fmt = (lambda v: f"{v:.4g}" if isinstance(v, float) else str(v))
        table.add_row(name, fmt(value), fmt(ref))
    Console().print(table)
    for organ_table in organ_rich_tables(report.organs, model):
        Console().print(organ_table)
    for name, path in report.files.items():
        Console().print(f"{name:>16}: {path}")
    _phantoms_only(model)


if __name__ == "__main__":  # pragma: no cover
    app()
