"""The command line documents itself (in the spirit of sqlite-utils' tests/test_docs.py):
every `txmetrics ...` command written in README.md and docs/*.md exists with the options
written next to it, every command and option has help, flags show as flags, and shell
completion is on."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from tests.helpers import ROOT
from txmetrics_cli.main import app

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ROOT_COMMAND: Any = typer.main.get_command(app)


def walk(command: Any = ROOT_COMMAND, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from walk(sub, (*path, name))


COMMANDS = dict(walk())


def code_spans(text: str) -> Iterator[str]:
    """Fenced code blocks (line by line) and inline code."""
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        yield from block.splitlines()
    yield from re.findall(r"(?<!`)`([^`\n]+)`(?!`)", re.sub(r"```.*?```", "", text, flags=re.S))


def documented() -> Iterator[tuple[str, str]]:
    """(where, invocation) for every `txmetrics <word> ...` in the docs' code."""
    for doc in DOCS:
        for span in code_spans(doc.read_text()):
            for match in re.finditer(r"(?:^|(?<=[\s/(\"']))txmetrics((?:[ \t]+[^\s|;&#`]+)*)", span):
                if match.group(1).strip():
                    yield doc.name, "txmetrics" + match.group(1)


INVOCATIONS = sorted(set(documented()))


def test_the_docs_name_commands() -> None:
    assert len(INVOCATIONS) >= 20        # the parser finds them (README and docs/read-side.md have many)


@pytest.mark.parametrize(("doc", "invocation"), INVOCATIONS)
def test_documented_commands_exist_with_their_options(doc: str, invocation: str) -> None:
    words = [word.strip("()\"'`,;") for word in invocation.split()[1:]]
    path: tuple[str, ...] = ()
    while words and (*path, words[0]) in COMMANDS:
        path = (*path, words.pop(0))
    command = COMMANDS[path]
    assert path or words[0].startswith("--"), f"{doc}: {invocation!r} names no command"
    if path and hasattr(command, "commands"):   # a group: `txmetrics failed ...` is fine, a wrong subcommand is not
        assert not words or not re.fullmatch(r"[a-z][a-z-]*", words[0]), f"{doc}: no command {words[0]!r} in {path}"
        return
    options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)} | {"--help"}
    for word in words:
        name = word.strip("[](),.").split("=", 1)[0]
        if name.startswith("--"):
            assert name in options, f"{doc}: {' '.join(path)} has no option {name} ({invocation!r})"


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=lambda p: " ".join(p) or "txmetrics")
def test_every_command_and_option_has_help(path: tuple[str, ...]) -> None:
    command = COMMANDS[path]
    assert (command.help or "").strip(), f"{' '.join(path)} has no help"
    for param in command.params:
        assert (getattr(param, "help", None) or "").strip(), f"{' '.join(path)}: {param.name} has no help"
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.stdout          # flags read as flags
    for param in command.params:
        if getattr(param, "is_flag", False) and not param.secondary_opts:
            flag_line = next(line for line in result.stdout.splitlines() if line.strip().startswith(param.opts[0]))
            assert flag_line.split()[0] == param.opts[0] and flag_line.split()[1] not in ("BOOLEAN", "<bool>")


def test_all_is_a_flag() -> None:
    result = CliRunner().invoke(app, ["failed", "list", "--help"])
    line = next(line for line in result.stdout.splitlines() if line.strip().startswith("--all"))
    assert re.match(r"\s*--all\s+include replayed and resolved items", line), line


def test_shell_completion_is_on() -> None:
    assert "--install-completion" in CliRunner().invoke(app, ["--help"]).stdout
    binary = Path(sys.executable).with_name("txmetrics")
    env = {**os.environ, "_TXMETRICS_COMPLETE": "complete_bash", "COMP_WORDS": "txmetrics fa", "COMP_CWORD": "1"}
    out = subprocess.run([str(binary)], env=env, capture_output=True, text=True, timeout=60)
    assert "failed" in out.stdout.split(), (out.stdout, out.stderr)
    env.update(COMP_WORDS="txmetrics lifecycle validate --stack ", COMP_CWORD="4")
    out = subprocess.run([str(binary)], env=env, capture_output=True, text=True, timeout=60)
    assert {"dev", "prod"} <= set(out.stdout.split()), (out.stdout, out.stderr)
