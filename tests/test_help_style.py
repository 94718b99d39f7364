"""Every command's help in one style: click's plain metavars (MODEL, PATH, N, TEXT), -h/--help and -v/--verbose
after any subcommand, and top-level one-liners that fit without "..."."""

from __future__ import annotations

import os
import re

import pytest
import typer

from mixcli.cli.app import app

# A metavar: upper-case words (IMAGES..., R,R,...), or the one mixed-case size form WxH.
METAVAR = re.compile(r"^(\[?[A-Z][A-Z0-9_,.]*\]?(\.\.\.)?|WxH)$")


def _commands(group=None, path=()):
    group = group or typer.main.get_command(app)
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name)


COMMANDS = [" ".join(path) for path in _commands()]


def _names_column(help_text: str) -> list[str]:
    """The left column of the Arguments and Options sections: `-q, --question TEXT`, `MODEL`."""
    sections = re.split(r"^(?:Arguments|Options):$", help_text, flags=re.M)[1:]
    return [line.strip().split("  ")[0] for section in sections for line in section.splitlines()
            if re.match(r"^  (-|[A-Z])", line)]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_after_the_subcommand_in_one_metavar_style(cli, command):
    result = cli(*command.split(), "-h")
    assert result.exit_code == 0, result.stderr
    usage = result.stdout.splitlines()[0]
    assert usage.startswith(f"Usage: mix {command} [OPTIONS]"), usage
    assert "{" not in usage and "<" not in usage, usage
    for entry in _names_column(result.stdout):
        words = [w.rstrip(",") for w in entry.split() if not w.startswith("-") and w != "/"]
        assert all(METAVAR.match(w) for w in words), f"{command}: {entry!r}"
    assert "-v, --verbose" in result.stdout


@pytest.mark.parametrize("command", ["models list", "datacopilot head x.jsonl", "check-env"])
def test_verbose_after_the_subcommand_turns_debug_on(cli, command, monkeypatch):
    monkeypatch.setenv("MIX_DEBUG", "0")  # off, and restored after the test (the command sets it in-process)
    cli(*command.split(), "-v")
    assert os.environ.get("MIX_DEBUG") == "1"


@pytest.mark.parametrize("group", ["", "models", "datacopilot", "ext"])
def test_the_command_lists_fit_without_ellipses(cli, group):
    result = cli(*group.split(), "--help")
    listed = result.stdout.split("Commands:")[1]
    assert "..." not in listed, listed
    assert all(len(line) <= 80 for line in listed.splitlines())


def test_split_counts_its_outputs_in_words(cli, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": 1, "conversations": []}\n')
    result = cli("datacopilot", "split", str(data), "--ratios", "0.5,0.5", "-o", str(tmp_path / "a.jsonl"))
    assert result.exit_code == 2 and "2 ratios but 1 output " in result.stderr, result.stderr
