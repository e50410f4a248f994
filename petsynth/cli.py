"""The ``petsynth`` command line: thin wrappers that parse arguments, call the API and print with rich."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

import petsynth

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
    task: str = typer.Option("ct2pet", "--task", help="ct2pet (PET/CT), mr2pet (PET/MR brain) or lpet2spet "
                             "(PET/CT with low-dose PET series)."),
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

    from petsynth.data import phantom as ph

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
    task: str = typer.Option("ct2pet", "--task", help="ct2pet, mr2pet or lpet2spet."),
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

    from petsynth.data.prepare import TASKS, prepare_dataset
    from petsynth.data.store import DatasetError

    if task not in TASKS:
        raise typer.BadParameter(f"{task!r}; choose one of {', '.join(TASKS)}", param_hint="--task")
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
            bar.update(job, completed=done, total=total, description=f"preparing ({status})")

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


def _parse_overrides(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r}; use KEY=VALUE, e.g. train.steps=100", param_hint="--set")
        out[key.strip()] = yaml.safe_load(value)
    return out


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
def methods() -> None:
    """List the available methods and the tasks each can be trained for."""
    from petsynth.methods.base import available_methods, method_class

    for name in available_methods():
        cls = method_class(name)
        console.print(f"[bold]{name}[/bold] ({', '.join(cls.tasks)}): {cls.summary}")


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-output"), "--out", "-o", help="Folder to write into (replaced files "
                             "inside it are overwritten)."),
    seed: int = typer.Option(0, "--seed", help="Phantom seed."),
    preset: str = typer.Option("small", "--preset", help="Phantom size: small (default, fast) or default."),
) -> None:
    """The embedded default: a phantom PET/CT study, its attenuation map, and metrics against the truth."""
    from rich.table import Table

    from petsynth.demo import run_demo

    with console.status("demo") as status:
        report = run_demo(out, seed=seed, preset=preset, progress=lambda msg: status.update(f"demo: {msg}"))
    table = Table(title=f"petsynth demo ({report.seconds:.0f} s): reconstructed phantom PET vs noise-free truth")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in report.metrics.items():
        table.add_row(name, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(table)
    for name, path in report.files.items():
        Console().print(f"{name:>16}: {path}")
    console.print("[yellow]The demo knows phantoms only; real use means preparing and training on real data."
                  "[/yellow]")


if __name__ == "__main__":  # pragma: no cover
    app()
