"""`--help` of every command: options grouped in panels, examples shown, no `<bool>` / `<str>` type noise (issue 16)."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from dsmcli.cli import app

PANELS = ("Input", "Output", "Model", "Decoding", "Performance", "Devices")
COMMANDS = {  # command -> the panels it must show
    "transcribe": PANELS,
    "speak": PANELS,
    "dialog": ("Output", "Model", "Decoding", "Performance", "Devices"),
    "voices": ("Model", "Output"),
    "bench": ("Input", "Output", "Model", "Performance"),
    "models": ("Output",),
    "download": (),
}
PANEL_TITLE = re.compile(r"^╭─ (\w[\w ]*?) ─")


def help_text(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "120", "NO_COLOR": "1", "TERM": "dumb"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_groups_options_in_panels_with_examples(command):
    text = help_text(command)
    titles = [m.group(1) for line in text.splitlines() if (m := PANEL_TITLE.match(line))]
    assert [t for t in titles if t in PANELS] == [p for p in PANELS if p in COMMANDS[command]], titles
    assert set(titles) <= {"Arguments", "Options", *PANELS}, titles
    # the flat "Options" panel keeps only --help (and the root's --version): every real option sits in a panel
    options_panel = text.split("╭─ Options ")[1].split("╰")[0]
    assert re.findall(r"--[\w-]+", options_panel) == ["--help"]
    examples = text.split("Examples", 1)[1].splitlines() if "Examples" in text else []
    commands = [line.strip() for line in examples if line.strip().startswith(("dsm ", "cat ", "llm "))]
    assert len(commands) >= 2 and all(f"dsm {command}" in line for line in commands), text
    assert not re.search(r"<(bool|str|int|float|list\[[^\]]*\])[^>]*>", text), text


def test_value_options_show_a_metavar_and_flags_none():
    text = help_text("transcribe")
    assert re.search(r"--output\s+-o\s+PATH\s", text) and re.search(r"--batch-size\s+-b\s+N \[x>=1\]", text)
    srt_line = next(line for line in text.splitlines() if "--srt " in line)
    assert re.search(r"--srt\s+Shortcut for --format srt", srt_line), srt_line
    assert "[S1]" in help_text("dialog")  # Rich markup in examples and help is escaped, not eaten
