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
    out: Path = typer.Argument(..., help="Folder to write the studies into."),
) -> None:
    """Write digital phantom studies (CT/PET, MR/PET or low-dose PET) with their ground truth."""
    raise NotImplementedError("phantom command: being written")


if __name__ == "__main__":  # pragma: no cover
    app()
