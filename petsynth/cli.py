"""The ``petsynth`` command line: thin wrappers that parse arguments, call the API and print with rich."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

import petsynth
from petsynth.tasks import DEFAULT_TASK, TASK_NAMES, TASKS

app = typer.Typer(
    name="petsynth",
    help="Synthesize quantitative PET (SUV) from CT, MRI or low-dose PET with physics-guided diffusion models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console(stderr=True)


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


@app.command()
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
) -> None:
    """Write digital phantom studies (CT/PET, MR/PET or low-dose PET) with their ground truth."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        job = bar.add_task(f"{task} phantoms", total=studies)

        def advance(done: int, total: int, study_id: str) -> None:
            bar.update(job, completed=done, description=f"{task} {study_id}")

        try:
            paths = ph.write_studies(out, task=task, studies=studies, seed=seed, fmt=fmt, preset=preset,
                                     dose_fractions=fractions, flavour=flavour, start_index=start_index,
                                     overwrite=overwrite, progress=advance)
        except (FileExistsError, ValueError, OSError) as err:
            console.print(f"[red]error:[/red] {err}")
            raise typer.Exit(code=1) from None
    console.print(f"[green]wrote {len(paths)} {task} {fmt} stud{'y' if len(paths) == 1 else 'ies'}[/green] "
                  f"to {out} (truth in each study's truth/ folder; index in {out / 'phantoms.json'})")


def _parse_range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    lo_i, hi_i = int(lo), int(hi or lo)
    if not 0 < lo_i <= hi_i:
        raise ValueError
    return lo_i, hi_i


@app.command()
def prepare(
    inputs: list[Path] = typer.Argument(..., help="Folders (searched recursively) or files with DICOM studies."),
    out: Path = typer.Option(..., "--out", "-o", help="Dataset folder to create (or continue with --resume)."),
    task: str = typer.Option(DEFAULT_TASK, "--task", help="The task: " + ", ".join(TASK_NAMES) + "."),
    size: int = typer.Option(256, "--size", min=8, help="Output slice size in pixels (square)."),
    workers: int = typer.Option(1, "--workers", "-j", min=1, help="Studies prepared in parallel (processes)."),
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
) -> None:
    """Prepare raw DICOM studies into a paired, split dataset in physical units (HU, SUV).

    Exits with 1 when any study failed; the good ones are kept. The per-study report is
    DATASET/prepare_report.json (pseudonyms only)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from petsynth.data.prepare import prepare_dataset
    from petsynth.data.store import DatasetError

    if task not in TASK_NAMES:
        raise typer.BadParameter(f"{task!r}; choose one of {', '.join(TASK_NAMES)}", param_hint="--task")
    try:
        fractions = tuple(float(v) for v in split.split(","))
    except ValueError:
        raise typer.BadParameter(f"{split!r} is not three comma-separated numbers", param_hint="--split") from None
    per_study = None
    if slices_per_study is not None:
        try:
            per_study = _parse_range(slices_per_study)
        except ValueError:
            raise typer.BadParameter(f"{slices_per_study!r}; use N or LO-HI", param_hint="--slices-per-study") \
                from None
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        job = bar.add_task("scanning", total=None)

        def advance(done: int, total: int, status: str) -> None:
            bar.update(job, completed=done, total=total,
                       description="scanning files" if status == "scanning" else f"preparing ({status})")

        try:
            report = prepare_dataset(inputs, out, task, size=size, workers=workers, resume=resume,
                                     key_file=key_file, split=fractions, seed=seed, slices_per_study=per_study,
                                     mapping_file=pseudonym_map, progress=advance)
        except (DatasetError, FileNotFoundError, ValueError) as err:
            console.print(f"[red]error:[/red] {err}")
            raise typer.Exit(code=1) from None
    counts = {k: sum(r.status == k for r in report.results) for k in ("ok", "skipped", "failed")}
    slices = sum(r.slices for r in report.results)
    console.print(f"{counts['ok']} studies prepared ({slices} slice pairs), {counts['skipped']} already present, "
                  f"{counts['failed']} failed; {len(report.skipped_files)} files ignored. Dataset: {out}")
    for r in report.failed:
        console.print(f"[red]failed[/red] {r.study}: {r.reason}")
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


SAMPLER_OPTION_HELP = ("Sampler option KEY=VALUE of diffusion models, repeatable (e.g. snr=0.16); "
                       "`petsynth methods` lists each method's options. An option the model lacks is an error.")


@app.command()
def train(
    method: str = typer.Argument(..., help="Method name (`petsynth methods` lists them)."),
    data: Path = typer.Argument(..., help="Prepared dataset folder (from `petsynth prepare`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: checkpoints, logs, curves, model/."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML with method_config: and train: "
                                          "sections."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Optimiser steps (train.steps)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Slices per step."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default: the method's)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 or bf16 (autocast)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="DataLoader worker processes."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads."),
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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

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
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    try:
        run = make_run_config(method, data, config_file=config, overrides=sets)
        with Progress(*columns, console=console) as bar:
            job = bar.add_task(f"train {method}", total=run.train.steps, info="")

            def advance(step: int, total: int, logged: dict) -> None:
                info = " ".join(f"{k} {v:.4g}" for k, v in logged.items() if k.endswith("loss"))
                if "sec_per_step" in logged:
                    info += f" {1.0 / max(logged['sec_per_step'], 1e-9):.2f} it/s"
                bar.update(job, completed=step, info=info)

            model = run_training(run, out, resume=resume, progress=advance)
    except (TrainError, ConfigError, MethodError, CheckpointError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(code=1) from None
    console.print(f"trained {method}: model in {model}; curves in {out / 'curves.png'}")


@app.command()
def evaluate(
    models: list[str] = typer.Argument(..., help="Models to compare: run folders, model folders (RUN/model) or "
                                       "bundled model names (phantom-cpdm)."),
    data: Path = typer.Option(..., "--data", "-d", help="Prepared dataset folder (from `petsynth prepare`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for metrics.csv, per_slice.csv, table.md, "
                             "figure.png and evaluation.json."),
    split: str = typer.Option("test", "--split", help="train, val, test or all."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Sampling steps of diffusion models "
                                        "(default: each model's)."),
    eta: Optional[float] = typer.Option(None, "--eta", min=0.0, max=1.0, help="Sampler stochasticity of "
                                        "diffusion models (0: deterministic; default: each model's)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Slices per batch."),
    max_slices: Optional[int] = typer.Option(None, "--max-slices", min=1, help="Evaluate this many evenly "
                                             "spaced slices of the split (the same for every model)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads."),
    bf16: bool = typer.Option(False, "--bf16", help="bf16 autocast."),
    seed: int = typer.Option(0, "--seed", help="Seed of the samplers' noise."),
    sampler_options: list[str] = typer.Option([], "--sampler-option", help=SAMPLER_OPTION_HELP),
) -> None:
    """Score models on a dataset split against the real PET (and the phantom truth): a CSV, a Markdown table
    like the CPDM paper's Table 4, and an error-map figure like its Figure 3."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn
    from rich.table import Table

    from petsynth.data.store import DatasetError
    from petsynth.evaluate import EvaluationError, evaluate as run_evaluation
    from petsynth.inference import PredictOptions, set_threads
    from petsynth.methods.base import MethodError
    from petsynth.train.checkpoint import CheckpointError

    set_threads(threads)
    extra = _parse_overrides(sampler_options, "--sampler-option", "snr=0.16")
    options = PredictOptions(steps=steps, eta=eta, batch_size=batch_size, bf16=bf16, seed=seed, sampler=extra)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    try:
        with Progress(*columns, console=console) as bar:
            jobs: dict[str, int] = {}

            def advance(name: str, done: int, total: int) -> None:
                if name not in jobs:
                    jobs[name] = bar.add_task(f"evaluate {name}", total=total)
                bar.update(jobs[name], completed=done, total=total)

            report = run_evaluation(models, data, out, split=split, options=options, max_slices=max_slices,
                                    progress=advance)
    except (EvaluationError, DatasetError, MethodError, CheckpointError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(code=1) from None
    n_studies = len(report.studies)
    table = Table(title=f"{report.split}: {report.slices} slices of {n_studies} stud{'y' if n_studies == 1 else 'ies'} "
                        f"({report.seconds:.0f} s); means over slices")
    table.add_column("model")
    table.add_column("ref")
    for s in report.metrics:
        table.add_column(s.label + (" (paper)" if s.convention == "cpdm" else ""), justify="right")
    for model in report.models:
        for ref in report.references:
            row = report.overall[model][ref]
            table.add_row(model, ref, *(f"{row[s.key]:.{s.digits}f}" for s in report.metrics))
    Console().print(table)
    for note in report.notes:
        console.print(f"[dim]{note}[/dim]")
    for name, path in report.files.items():
        Console().print(f"{name:>10}: {path}")


@app.command()
def methods() -> None:
    """List the available methods, the tasks each can be trained for and their sampler options."""
    from petsynth.methods.base import available_methods, method_class

    for name in available_methods():
        cls = method_class(name)
        options = ", ".join(cls.sampler_option_names())
        console.print(f"[bold]{name}[/bold] ({', '.join(cls.tasks)}): {cls.summary}"
                      + (f" [dim](sampler options: {options})[/dim]" if options else ""))


@app.command()
def translate(
    model: str = typer.Argument(..., help="A trained model: run folder, RUN/model folder, checkpoint folder, or "
                                "the bundled 'phantom-cpdm' (phantoms only)."),
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
    device: str = typer.Option("auto", "--device", help="auto (a CUDA GPU when there is one), cpu or cuda."),
    kvp: Optional[float] = typer.Option(None, "--kvp", min=20.0, max=200.0, help="Tube voltage (kV) for the "
                                        "attenuation map when the CT gives none (NIfTI); default 120."),
    spacing: Optional[float] = typer.Option(None, "--spacing", help="In-plane output pixel spacing in mm "
                                            "(default: the spacing the model was trained at)."),
    split: str = typer.Option("test", "--split", help="Dataset inputs: train, val or test."),
    dicom: bool = typer.Option(True, "--dicom/--no-dicom", help="Also write the synthetic PET as a DICOM series."),
    png: bool = typer.Option(False, "--png", help="Also write PNG panels of a few slices."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampler's noise (stochastic samplers)."),
    sampler_options: list[str] = typer.Option([], "--sampler-option", help=SAMPLER_OPTION_HELP),
    mask_body: bool = typer.Option(True, "--mask-body/--no-mask-body", help="SUV 0 outside the body (CT > -500 "
                                   "HU where the task has a CT, else the MR above a tenth of its 99th "
                                   "percentile; holes filled, + 10 mm); --no-mask-body keeps the raw output."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    """Translate a CT, an MR or a low-dose PET (+ its CT), as the model's task reads, into synthetic PET in SUV.

    Writes OUT/synthetic_pet.nii.gz (it overlays the source in a viewer), OUT/dicom/ (a PET series in the
    source's study, Units GML, marked synthetic and not for diagnosis), OUT/translate.json, and with --png
    panels. A model of another task than the input's is refused."""
    import warnings

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    from petsynth.methods.base import MethodError
    from petsynth.train.checkpoint import CheckpointError
    from petsynth.translation import TranslateError, translate as run_translate

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    try:
        with Progress(*columns, console=console) as bar, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            job = bar.add_task("translate", total=None)

            def advance(done: int, total: int) -> None:
                bar.update(job, completed=done, total=total, description="translating slices")

            result = run_translate(model, input, out, ct=ct, steps=steps, eta=eta, batch_size=batch_size,
                                   sampler=_parse_overrides(sampler_options, "--sampler-option", "snr=0.16"),
                                   bf16=bf16, threads=threads, kvp=kvp, spacing_mm=spacing, split=split, write_dicom=dicom,
                                   png=png, seed=seed, overwrite=overwrite, mask_body=mask_body, device=device,
                                   progress=advance,
                                   say=lambda msg: bar.update(job, description=msg))
        for w in caught:
            console.print(f"[yellow]warning:[/yellow] {w.message}")
    except (TranslateError, MethodError, CheckpointError, ValueError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(code=1) from None
    console.print(f"translated {result.slices} slices in {result.seconds:.1f} s "
                  f"({result.seconds / max(result.slices, 1):.3f} s/slice) into {result.out_dir}")
    for name, path in result.files.items():
        Console().print(f"{name:>10}: {path}")
    if result.info.get("model", {}).get("name") == "phantom-cpdm":
        console.print("[yellow]phantom-cpdm knows digital phantoms only: its output for a real patient means "
                      "nothing. Train on real data with `petsynth prepare` and `petsynth train`.[/yellow]")


@app.command()
def bench(
    model: str = typer.Option("phantom-cpdm", "--model", help="Model to time (default: the bundled one)."),
    steps: str = typer.Option("1,5,10,20", "--steps", help="Comma-separated sampling step counts."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1, help="Slices per forward pass."),
    slices: int = typer.Option(32, "--slices", min=1, help="Slices timed per step count."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads (default: torch's)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
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
    from petsynth.inference import set_threads

    try:
        step_list = [int(v) for v in steps.split(",")]
    except ValueError:
        raise typer.BadParameter(f"{steps!r}; use e.g. 1,5,10", param_hint="--steps") from None
    set_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Console()
    out.print(f"machine: {b.machine()}")
    with console.status("bench") as status:
        say = lambda msg: status.update(f"bench: {msg}")  # noqa: E731
        rows = b.translate_speed(model, step_list, batch_size=batch_size, slices=slices, device=device,
                                 bf16=bf16, say=say)
        whole = b.study_translate_time(model, workdir=workdir, say=say) if study else None
        peak = b.peak_rss_mb()
        gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
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


@app.command()
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

    from petsynth.demo import run_demo
    from petsynth.methods.base import MethodError
    from petsynth.train.checkpoint import CheckpointError
    from petsynth.translation import TranslateError

    try:
        with console.status("demo") as status:
            report = run_demo(out, seed=seed, preset=preset, model=model, steps=steps, threads=threads,
                              progress=lambda msg: status.update(f"demo: {msg}"))
    except (TranslateError, MethodError, CheckpointError, ValueError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(code=1) from None
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
    for name, path in report.files.items():
        Console().print(f"{name:>16}: {path}")
    console.print("[yellow]The bundled model knows digital phantoms only; real use means preparing your own data "
                  "(`petsynth prepare`) and training on it (`petsynth train`).[/yellow]")


if __name__ == "__main__":  # pragma: no cover
    app()
