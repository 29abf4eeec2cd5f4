"""``--kernels auto|native|torch`` (:class:`dsmcli.kernels.KernelChoice`) on the task commands, passed down
explicitly: to the task bundle (its Mimi's ``CodecOptions``, the quantized weights), its streams'
``EngineOptions`` and the Ray corpus actors.

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


def test_torch_choice_looks_up_no_kernel_and_native_conflicts_with_the_override(monkeypatch):
    from dsmcli.kernels.attention import decode_attention_op
    from dsmcli.kernels.linear import int8_linear_op

    monkeypatch.setattr(kernels, "build", lambda *a, **k: pytest.fail("a kernel was looked up under torch"))
    assert decode_attention_op("torch") is None and int8_linear_op(kernels.KernelChoice.TORCH) is None
    monkeypatch.setenv(kernels.DISABLE_ENV, "1")
    assert int8_linear_op("auto") is None  # the override means torch
    with pytest.raises(kernels.KernelUnavailable, match="conflicts with"):
        int8_linear_op("native")


def _kernel_users(model) -> list:
    from dsmcli.codec.model import KERNEL_USERS

    return [m.kernels for m in model.mimi.modules() if isinstance(m, KERNEL_USERS)]


def test_the_choice_reaches_the_bundle_its_weights_and_its_streams(tiny_stt):
    from dsmcli.engine.quantize import Int8Kernel, Int8Weight
    from dsmcli.stt import SttModel
    from dsmcli.stt.batch import SttBatch
    from dsmcli.stt.options import TranscribeOptions

    torch_model = SttModel.load(tiny_stt, quantize="int8", kernels="torch")
    assert torch_model.kernels is kernels.KernelChoice.TORCH
    assert set(_kernel_users(torch_model)) == {kernels.KernelChoice.TORCH}
    weights = [m for m in torch_model.lm.modules()
               if isinstance(m, Int8Weight) and m.kernel is not Int8Kernel.DEQUANTIZE]
    assert weights and all(w.resolved_kernel() is Int8Kernel.DEQUANTIZE for w in weights)
    batch = SttBatch(torch_model, TranscribeOptions(), 1)
    assert batch.stream.engine.kernels is kernels.KernelChoice.TORCH and batch.lm_state.backbone.rings.native is None
    auto_model = SttModel.load(tiny_stt, quantize="int8")
    assert auto_model.kernels is kernels.KernelChoice.AUTO
    assert set(_kernel_users(auto_model)) == {kernels.KernelChoice.AUTO}
    if decode_attention_available():
        assert SttBatch(auto_model, TranscribeOptions(), 1).lm_state.backbone.rings.native is not None


def decode_attention_available() -> bool:
    from dsmcli.kernels.attention import decode_attention_op

    return decode_attention_op("auto") is not None


def test_ray_actors_build_their_models_under_the_choice(tiny_stt, tmp_path):
    from dsmcli.corpus.options import RayOptions
    from dsmcli.corpus.ray_api import Transcribe, transcribe_request
    from dsmcli.corpus.ray_runner import actor_request

    request = transcribe_request(tiny_stt, str(tmp_path), ["txt"], device="cpu", dtype="float32", kernels="torch")
    sent = actor_request(request, RayOptions(device="cpu", dtype="float32"))
    assert sent.kernels == "torch"
    actor = Transcribe(request=sent)  # what each Ray actor builds
    assert actor.model.kernels is kernels.KernelChoice.TORCH
    assert set(_kernel_users(actor.model)) == {kernels.KernelChoice.TORCH}
