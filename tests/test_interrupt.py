"""Ctrl-C during start-up: exit code 130 and one line on stderr, for every command, never a traceback.

Two moments: a real SIGINT while the process imports torch (``python -m dsmcli CMD`` in a subprocess, signalled
as soon as ``libtorch_cpu`` is mapped: the first seconds of every command), and a Ctrl-C while the model or the
registry loads (the loader raises KeyboardInterrupt, in this process, for each command).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import subprocess_env

STARTUP_TIMEOUT = 60.0  # seconds for the child to reach `import torch` (a busy machine)
EXIT_TIMEOUT = 60.0


def _maps(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""


def _sigint_while_importing_torch(args: list[str], cwd: Path) -> tuple[int, str]:
    """Start ``python -m dsmcli ARGS``, send SIGINT once torch's library is mapped; (exit code, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "dsmcli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=subprocess_env(), cwd=cwd)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while "libtorch_cpu" not in _maps(proc.pid):
            assert proc.poll() is None, f"{args} ended before importing torch: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, f"{args}: torch not imported after {STARTUP_TIMEOUT} s"
            time.sleep(0.002)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=EXIT_TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
    return proc.returncode, err.decode(errors="replace")


COMMANDS = [
    ["transcribe", "missing.wav"],
    ["speak", "--text", "hello"],
    ["dialog", "script.txt"],
    ["voices"],
    ["bench", "--random-weights"],
    ["models"],
    ["download", "stt-1b-en_fr"],
]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see the import")
@pytest.mark.parametrize("args", COMMANDS, ids=lambda args: args[0])
def test_ctrl_c_while_importing(args, tmp_path):
    code, err = _sigint_while_importing_torch(args, tmp_path)
    assert code == 130, err
    assert err.splitlines() == ["dsm: interrupted"], err


def _raise_keyboard_interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.fixture
def sigint_handler_kept():
    previous = signal.getsignal(signal.SIGINT)
    yield
    assert signal.getsignal(signal.SIGINT) is previous  # main() leaves the process's handler alone


@pytest.mark.parametrize("args, loader", [
    (["transcribe", "{clip}"], "dsmcli.stt.SttModel.load"),
    (["speak", "--text", "hello", "-o", "{tmp}/out.wav"], "dsmcli.speak_run.load_checkpoint"),
    (["dialog", "{script}"], "dsmcli.speak_run.load_checkpoint"),
    (["voices"], "dsmcli.speak_run.load_checkpoint"),
    (["bench", "--random-weights"], "dsmcli.bench.run_bench"),
    (["models"], "dsmcli.hub.load_registry"),
    (["download", "stt-1b-en_fr"], "dsmcli.hub.load_registry"),
], ids=lambda value: value[0] if isinstance(value, list) else None)
def test_ctrl_c_while_loading(args, loader, tmp_path, capfd, monkeypatch, sigint_handler_kept):
    from dsmcli.cli import main

    clip, script = tmp_path / "clip.wav", tmp_path / "script.txt"
    _write_clip(clip)
    script.write_text("[S1] Hello.\n[S2] Hi.\n", encoding="utf-8")
    monkeypatch.setattr(loader, _raise_keyboard_interrupt)
    monkeypatch.chdir(tmp_path)
    capfd.readouterr()
    with pytest.raises(SystemExit) as exited:
        main([arg.format(clip=clip, script=script, tmp=tmp_path) for arg in args])
    out, err = capfd.readouterr()
    assert exited.value.code == 130, err
    assert len(err.splitlines()) == 1 and "interrupted" in err and "Traceback" not in err, err


def _write_clip(path: Path) -> None:
    import numpy as np
    import soundfile

    soundfile.write(path, np.zeros(24000, np.float32), 24000, subtype="PCM_16")


def test_ctrl_c_while_the_cli_module_imports(monkeypatch, capsys):
    """The ``dsm`` script's entry point (pyproject) catches a Ctrl-C even before ``dsmcli.cli`` is imported."""
    import builtins

    import dsmcli.__main__ as entry

    tomllib = pytest.importorskip("tomllib")
    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["dsm"] == "dsmcli.__main__:run"
    real_import = builtins.__import__

    def interrupted_import(name, *args, **kwargs):
        if name == "dsmcli.cli":
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", interrupted_import)
    with pytest.raises(SystemExit) as exited:
        entry.run()
    assert exited.value.code == 130 and capsys.readouterr().err == "dsm: interrupted\n"
