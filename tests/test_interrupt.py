"""Ctrl-C during start-up: exit code 130 and one line on stderr, for every command, never a traceback.

The moments: a real SIGINT while the process imports torch (``python -m dsmcli CMD`` in a subprocess, signalled
as soon as ``libtorch_cpu`` is mapped: the first seconds of every command that runs a model); for the commands
that need no torch (``models``, ``download``: they start without it, as ``dsm --help`` does), a real SIGINT while
they import the Hub client (slowed down in the child); a real SIGINT while the weights are
read (transcribe and speak in a subprocess whose safetensors reader waits, as on a slow disk); and a Ctrl-C
while the model or the registry loads for every command (the loader raises KeyboardInterrupt, in this process).
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
]
TORCH_FREE_COMMANDS = [
    ["models"],
    ["download", "stt-1b-en_fr"],
]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see the import")
@pytest.mark.parametrize("args", COMMANDS, ids=lambda args: args[0])
def test_ctrl_c_while_importing(args, tmp_path):
    code, err = _sigint_while_importing_torch(args, tmp_path)
    assert code == 130, err
    assert err.splitlines() == ["dsm: interrupted"], err


SLOW_IMPORT = """
import importlib.abc, pathlib, sys, time
marker, slow_module = pathlib.Path(sys.argv[1]), sys.argv[2]
class SlowImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == slow_module:
            marker.touch()
            time.sleep(120)  # a slow import (cold disk): the test presses Ctrl-C meanwhile
        return None
sys.meta_path.insert(0, SlowImport())
sys.argv = ["dsm", *sys.argv[3:]]
from dsmcli.__main__ import run
run()
"""


def _sigint_when(marker: Path, child: list[str], cwd: Path, timeout: float = STARTUP_TIMEOUT) -> tuple[int, str]:
    """Run ``child``; send SIGINT once it creates ``marker``; (exit code, stderr)."""
    proc = subprocess.Popen(child, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=subprocess_env(), cwd=cwd)
    try:
        deadline = time.monotonic() + timeout
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, f"{child}: {marker.name} never appeared"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=EXIT_TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
    return proc.returncode, err.decode(errors="replace")


@pytest.mark.parametrize("args", TORCH_FREE_COMMANDS, ids=lambda args: args[0])
def test_ctrl_c_while_importing_the_hub_client(args, tmp_path):
    marker = tmp_path / "importing"
    code, err = _sigint_when(marker, [sys.executable, "-c", SLOW_IMPORT, str(marker), "huggingface_hub", *args],
                             tmp_path)
    assert code == 130, err
    assert err.splitlines() == ["dsm: interrupted"], err


@pytest.mark.parametrize("args", [["--help"], ["models", "--json"], ["speak", "--help"]], ids=" ".join)
def test_start_up_without_torch(args, tmp_path):
    """`dsm --help`, a command's help and `dsm models` never import torch (seconds saved on every such call)."""
    check = ("import runpy, sys; sys.argv = ['dsm', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('dsmcli', run_name='__main__')\n"
             "except SystemExit as exit:\n    assert exit.code in (0, None), exit.code\n"
             "print('torch' in sys.modules, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", check, *args], capture_output=True, env=subprocess_env(),
                          cwd=tmp_path, timeout=EXIT_TIMEOUT)
    assert proc.returncode == 0 and proc.stderr.decode().splitlines()[-1] == "False", proc.stderr.decode()


SLOW_DISK = """
import pathlib, sys, time
import safetensors, safetensors.torch
marker = pathlib.Path(sys.argv[1])
def slowly(real):
    def slow_disk(*args, **kwargs):
        marker.touch()
        time.sleep(120)  # weights on a slow disk: the test presses Ctrl-C meanwhile
        return real(*args, **kwargs)
    return slow_disk
safetensors.safe_open = slowly(safetensors.safe_open)  # what dsmcli.hub.weights opens a checkpoint with
safetensors.torch.load_file = slowly(safetensors.torch.load_file)
sys.argv = ["dsm", *sys.argv[2:]]
from dsmcli.__main__ import run
run()
"""


@pytest.mark.parametrize("command", ["transcribe", "speak"])
def test_real_ctrl_c_while_weights_load(command, tmp_path, tiny_stt, tiny_tts, tiny_voices):
    """A real SIGINT while the weights are being read (a slow disk, simulated in the child only)."""
    clip = tmp_path / "clip.wav"
    _write_clip(clip)
    args = (["transcribe", str(clip), "-m", tiny_stt] if command == "transcribe" else
            ["speak", "--text", "hello", "-m", tiny_tts, "--voice-repo", tiny_voices, "--voice", "voices/alice.wav",
             "-o", str(tmp_path / "out.wav")])
    marker = tmp_path / "loading"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_DISK, str(marker), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=subprocess_env(), cwd=tmp_path)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT * 2
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the weights were not read"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=EXIT_TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
    lines = err.decode(errors="replace").splitlines()
    assert proc.returncode == 130 and len(lines) == 1 and "interrupted" in lines[0], err.decode()


def _raise_keyboard_interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.fixture
def sigint_handler_kept():
    previous = signal.getsignal(signal.SIGINT)
    yield
    assert signal.getsignal(signal.SIGINT) is previous  # main() leaves the process's handler alone


@pytest.mark.parametrize("args, loader", [
    (["transcribe", "{clip}"], "dsmcli.stt.SttModel.load"),
    (["speak", "--text", "hello", "-o", "{tmp}/out.wav"], "dsmcli.commands.speak_run.load_checkpoint"),
    (["dialog", "{script}"], "dsmcli.commands.speak_run.load_checkpoint"),
    (["voices"], "dsmcli.commands.speak_run.load_checkpoint"),
    (["bench", "--random-weights"], "dsmcli.bench.runner.run_bench"),
    (["models"], "dsmcli.hub.registry.load_registry"),
    (["download", "stt-1b-en_fr"], "dsmcli.hub.registry.load_registry"),
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
