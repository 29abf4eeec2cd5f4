"""What the package declares matches what it ships and uses: the MIT LICENSE, runtime dependencies that are used
(each distribution here imports under its own name)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

REPO_ROOT = Path(__file__).resolve().parents[1]
# Declared but run as a program, not imported (each with the reason).
NOT_IMPORTED = {
    "ninja": "the build tool torch.utils.cpp_extension runs for dsmcli/kernels",
    "click": "the parser under Typer, declared only to pin the CLI stack to a tested range",
}


def _project() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _imported_top_modules() -> set[str]:
    found: set[str] = set()
    for path in (REPO_ROOT / "dsmcli").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
    return found


def test_mit_license_file_matches_the_declared_license():
    assert _project()["license"] == {"text": "MIT"}
    text = (REPO_ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n")
    assert re.search(r"^Copyright \(c\) \d{4} the dsmcli authors$", text, re.MULTILINE)
    assert "THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND" in text


def test_every_runtime_dependency_is_used():
    imported = _imported_top_modules()
    for requirement in _project()["dependencies"]:
        name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("-", "_")
        if name in NOT_IMPORTED:
            continue
        assert name in imported, f"{requirement} is declared but dsmcli never imports it"
