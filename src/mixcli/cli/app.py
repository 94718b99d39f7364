"""Builds the Typer app from the subcommand modules and turns errors into one line and an exit code."""

from __future__ import annotations

import os
from importlib import import_module
from typing import Annotated

import typer

from .. import __version__
from . import output
from .command import MixCommand
from .errors import handle_errors, stdout_failure

# Only commands that work are registered: (module under mixcli.cli, command name).
COMMANDS: list[tuple[str, str]] = [
    ("download", "download"), ("check_env", "check-env"), ("infer", "infer"), ("chat", "chat"), ("generate", "generate"),
    ("finetune", "finetune"),
    ("export", "export"),
    ("embed", "embed"),
    ("serve", "serve"),
]
GROUPS: list[tuple[str, str]] = [("models", "models"), ("datacopilot", "datacopilot"), ("ext", "ext"), ("bench", "bench")]

app = typer.Typer(
    name="mix",
    help="Multimodal models on PaddlePaddle: one install, one command per job.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        output.result(f"mix {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks and debug logs.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Multimodal models on PaddlePaddle: one install, one command per job."""
    if verbose:
        os.environ["MIX_DEBUG"] = "1"


def _register() -> None:
    for module, name in COMMANDS:
        mod = import_module(f"mixcli.cli.{module}")
        app.command(name=name, cls=MixCommand)(handle_errors(mod.command))
    for module, name in GROUPS:
        mod = import_module(f"mixcli.cli.{module}")
        for command in mod.app.registered_commands:
            command.callback = handle_errors(command.callback)
            command.cls = MixCommand
        app.add_typer(mod.app, name=name)


_register()


def main() -> None:
    """Console entry point."""
    try:
        app()
    except OSError as e:  # a write outside any command, such as --help into /dev/full
        status = stdout_failure(e)
        if status is None:
            raise
        raise SystemExit(status) from None


if __name__ == "__main__":  # `python -m mixcli.cli.app`, as the tests run it
    main()
