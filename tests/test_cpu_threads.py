"""CPU threading defaults: `dsm` runs torch's OpenMP pool with a passive wait policy (unless the user chose one),
and `speak` / `dialog` take `--threads` like `transcribe` and `bench`.

The speed under load these defaults buy is measured by ``benchmarks/under_load.py`` (README "Performance"), not
here: a timing under a synthetic load is too noisy for a shared test machine.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dsmcli.commands import speak_run
from dsmcli.cli import main
from dsmcli.cpu_threads import apply_wait_policy

REPO_ROOT = Path(__file__).resolve().parents[1]
IMPORT_CLI_THEN_TORCH = "import dsmcli.cli, torch; torch.get_num_threads()"


def _openmp_env(extra: dict[str, str]) -> str:
    """The OpenMP settings torch's runtime reports (OMP_DISPLAY_ENV=VERBOSE) after ``import dsmcli.cli, torch``."""
    from conftest import subprocess_env

    env = {k: v for k, v in subprocess_env().items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(OMP_DISPLAY_ENV="VERBOSE", **extra)
    done = subprocess.run([sys.executable, "-c", IMPORT_CLI_THEN_TORCH], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_openmp_runtime_gets_a_passive_wait_policy():
    # libgomp shows an unset policy as PASSIVE too, but spins 300000 times: the spin count tells them apart
    assert "GOMP_SPINCOUNT = '0'" in _openmp_env({})
    assert "GOMP_SPINCOUNT = '300000'" in _openmp_env({"GOMP_SPINCOUNT": "300000"})  # the user's choice wins


def test_user_spin_count_is_left_alone():
    environ = {"GOMP_SPINCOUNT": "300000"}
    assert not apply_wait_policy(environ) and environ == {"GOMP_SPINCOUNT": "300000"}
    environ = {}
    assert apply_wait_policy(environ) and environ == {"OMP_WAIT_POLICY": "PASSIVE"}


class _Done:
    exit_code = 0


@pytest.mark.parametrize("command", ["speak", "dialog"])
def test_speak_and_dialog_take_threads(command, monkeypatch, tmp_path, capsys):
    seen: list[int] = []

    def execute(request):
        seen.append(torch.get_num_threads())
        return _Done()

    monkeypatch.setattr(speak_run, "execute", execute)
    script = tmp_path / "script.txt"
    script.write_text("[S1] Hello. [S2] Hi.")
    previous = torch.get_num_threads()
    try:
        for threads in ("1", "3"):
            with pytest.raises(SystemExit) as stopped:
                main([command, str(script), "--threads", threads])
            assert stopped.value.code == 0
    finally:
        torch.set_num_threads(previous)
    assert seen == [1, 3]
    capsys.readouterr()
    try:
        main([command, "--help"])
    except SystemExit as stopped:
        assert not stopped.code
    help_text = capsys.readouterr().out
    assert "Performance" in help_text and "--threads" in help_text.split("Performance", 1)[1]
