"""``--kernels auto|native|torch`` (:class:`dsmcli.kernels.KernelChoice`) on the task commands.

``torch`` writes the same bytes as ``DSM_NO_NATIVE_KERNELS=1``; with ``torch`` no call site reaches a kernel build
(``kernels.build`` raises here); ``native`` with a broken toolchain is one error line and exit 1; an unknown choice
is a usage error (exit 2). The agreement of each native kernel with its torch path is in the per-kernel tests
(test_codec_kernels.py, test_seanet_native.py, test_mimi_transformer_native.py, test_decode_attention.py, ...).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import soundfile
from conftest import run_dsm, subprocess_env

from dsmcli import kernels

REPO_ROOT = Path(__file__).resolve().parents[1]
TEXT = "Hello there, the tiny model reads this line."
NO_BUILDS = """
import sys
from dsmcli import kernels
from dsmcli.cli import main
def refuse(*args, **kwargs):
    raise AssertionError("a native kernel was looked up under --kernels torch")
kernels.build = refuse
main(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def clip(tmp_path_factory, bria_24k) -> Path:
    path = tmp_path_factory.mktemp("clip") / "clip.wav"
    soundfile.write(path, bria_24k(2.0), 24000, subtype="PCM_16")
    return path


def _transcribe(tiny_stt, clip, out: Path) -> list[str]:
    return ["transcribe", str(clip), "-m", tiny_stt, "-f", "json", "-o", str(out)]


def _speak(tiny_tts, tiny_voices, out: Path) -> list[str]:
    return ["speak", "--text", TEXT, "--model", tiny_tts, "--voice-repo", tiny_voices, "--voice", "voices/alice.wav",
            "--seed", "1", "-o", str(out)]


def _runs(tmp_path, tiny_stt, tiny_tts, tiny_voices, clip, name: str) -> list[list[str]]:
    folder = tmp_path / name
    folder.mkdir()
    return [_transcribe(tiny_stt, clip, folder), _speak(tiny_tts, tiny_voices, folder / "speech.wav")]


def _outputs(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_torch_choice_equals_the_environment_override(tmp_path, tiny_stt, tiny_tts, tiny_voices, clip):
    for args in _runs(tmp_path, tiny_stt, tiny_tts, tiny_voices, clip, "env"):
        done = run_dsm(*args, env={kernels.DISABLE_ENV: "1"})
        assert done.returncode == 0, done.stderr
    for args in _runs(tmp_path, tiny_stt, tiny_tts, tiny_voices, clip, "flag"):
        done = run_dsm(*args, "--kernels", "torch")
        assert done.returncode == 0, done.stderr
    env, flag = _outputs(tmp_path / "env"), _outputs(tmp_path / "flag")
    assert sorted(env) == ["clip.json", "speech.wav"] and env == flag


def test_torch_choice_reaches_every_call_site(tmp_path, tiny_stt, tiny_tts, tiny_voices, clip):
    env = subprocess_env({kernels.DISABLE_ENV: "0"})
    for args in _runs(tmp_path, tiny_stt, tiny_tts, tiny_voices, clip, "torch"):
        done = subprocess.run([sys.executable, "-c", NO_BUILDS, *args, "--kernels", "torch"], capture_output=True,
                              text=True, cwd=REPO_ROOT, env=env, timeout=600)
        assert done.returncode == 0, done.stderr
    assert sorted(_outputs(tmp_path / "torch")) == ["clip.json", "speech.wav"]


def test_native_choice_with_a_broken_toolchain_is_one_error_line(tmp_path, tiny_stt, clip):
    done = run_dsm(*_transcribe(tiny_stt, clip, tmp_path), "--kernels", "native",
                   env={"XDG_CACHE_HOME": str(tmp_path / "cache"), "CXX": "/bin/false", kernels.DISABLE_ENV: "0"})
    lines = done.stderr.decode().strip().splitlines()
    assert done.returncode == 1, done.stderr
    assert lines[-1].startswith("dsm: error: --kernels native: the ") and "cannot be built" in lines[-1], lines
    assert not any(line.startswith("Traceback") for line in lines)


def test_unknown_choice_is_a_usage_error(tmp_path, tiny_stt, clip):
    done = run_dsm(*_transcribe(tiny_stt, clip, tmp_path), "--kernels", "fast")
    assert done.returncode == 2 and done.stderr.decode().strip() == (
        "dsm: error: --kernels: unknown choice 'fast' (auto, native, torch)")


def test_use_kernels_switches_the_ops_and_restores():
    previous = kernels.use_kernels("torch")
    try:
        assert kernels.kernel_choice() is kernels.KernelChoice.TORCH
        assert all(op() is None for op in kernels._OPS)
    finally:
        kernels.use_kernels(previous)
    assert kernels.kernel_choice() is (kernels.KernelChoice.TORCH if kernels.disabled() else previous)
