"""Registry, checkpoint resolution and loader errors, through the library and the `dsm` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dsmcli.hub import files as hub
from dsmcli.hub import checkpoint, registry
from dsmcli.hub.task_config import GenerationConfig, SttConfig
from dsmcli.errors import EXIT_MODEL, EXIT_USAGE, ModelLoadError
from dsmcli.hub.weights import read_safetensors
from dsmcli.nn.state import assign_state

REPO_ROOT = Path(__file__).resolve().parents[1]


def dsm(*args: str, hf_home: Path, offline: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1", NO_COLOR="1", COLUMNS="200")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "dsmcli", *args], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120
    )


def fake_cached_repo(hf_home: Path, repo: str, files: dict[str, str]) -> None:
    """Lay files out as a Hugging Face cache entry (refs/main → snapshot)."""
    owner, name = repo.split("/")
    root = hf_home / "hub" / f"models--{owner}--{name}"
    commit = "0" * 40
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    for fname, text in files.items():
        (snap / fname).write_text(text)


def test_registry_has_the_released_models():
    reg = registry.load_registry()
    assert reg["stt-1b-en_fr"].repo == "kyutai/stt-1b-en_fr"
    assert reg["stt-2.6b-en"].repo == "kyutai/stt-2.6b-en"
    assert reg["tts-1.6b-en_fr"].repo == "kyutai/tts-1.6b-en_fr"
    assert reg["tts-0.75b-en-public"].repo == "kyutai/tts-0.75b-en-public"
    assert reg["tts-voices"].role == "voices"
    assert registry.default_model("stt") == "stt-1b-en_fr"
    assert registry.default_model("tts") == "tts-1.6b-en_fr"


def test_resolve_source_kinds(tmp_path):
    assert hub.resolve_source("stt-1b-en_fr").repo == "kyutai/stt-1b-en_fr"
    src = hub.resolve_source("someone/model@abc123")
    assert (src.repo, src.revision) == ("someone/model", "abc123")
    assert hub.resolve_source(str(tmp_path)).local_dir == tmp_path
    with pytest.raises(ModelLoadError, match="unknown model"):
        hub.resolve_source("no-such-model")


def test_checkpoint_splits_config_like_the_reference(tmp_path):
    config = {
        "model_type": "stt", "dim": 64, "mimi_name": "m.safetensors", "tokenizer_name": "t.model",
        "stt_config": {"audio_delay_seconds": 0.5}, "lm_gen_config": {"temp": 0},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    ckpt = checkpoint.load_checkpoint(tmp_path)
    assert ckpt.model_type == "stt" and ckpt.lm_name == checkpoint.DEFAULT_LM_NAME
    assert ckpt.lm_kwargs == {"dim": 64}
    assert ckpt.stt == SttConfig(audio_delay_seconds=0.5) and ckpt.generation == GenerationConfig(temp=0.0)
    with pytest.raises(ModelLoadError, match="missing file .*m.safetensors"):
        _ = ckpt.mimi_path


def test_corrupt_safetensors_is_a_model_error(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        read_safetensors(bad)
    with pytest.raises(ModelLoadError, match="never pickle"):
        read_safetensors(tmp_path / "model.bin")


def test_read_safetensors_gives_the_files_tensors(tmp_path):
    """Each tensor on a mapping of its own: the values, dtypes and shapes load_file gives (bfloat16, odd
    offsets, empty and scalar tensors included); a file cut short is a model error."""
    from safetensors.torch import load_file

    path = tmp_path / "w.safetensors"
    tensors = {"a": torch.randn(3, 5).to(torch.bfloat16), "b": torch.arange(7, dtype=torch.int8),
               "c": torch.randn(2, 3), "empty": torch.zeros(0, 4), "scalar": torch.tensor(2.5)}
    save_file(tensors, str(path))
    read, expected = read_safetensors(path), load_file(str(path))
    assert read.keys() == expected.keys()
    for name, tensor in expected.items():
        assert read[name].dtype == tensor.dtype and torch.equal(read[name], tensor)
    read["c"].add_(1.0)  # a private (copy-on-write) mapping: the file is untouched
    assert torch.equal(load_file(str(path))["c"], tensors["c"])
    del read, expected
    data = path.read_bytes()
    path.write_bytes(data[:-8])
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        read_safetensors(path)


def test_assign_state_names_the_key_and_shapes(tmp_path):
    module = torch.nn.Linear(4, 3, bias=False)
    path = tmp_path / "w.safetensors"
    save_file({"weight": torch.zeros(3, 5)}, str(path))
    with pytest.raises(ModelLoadError, match=r"weight has shape \(3, 5\).*expects \(3, 4\)"):
        assign_state(module, read_safetensors(path), "w.safetensors")
    with pytest.raises(ModelLoadError, match="missing tensor weight"):
        assign_state(module, {}, "w.safetensors")
    with pytest.raises(ModelLoadError, match="unexpected tensor extra"):
        assign_state(module, {"weight": torch.ones(3, 4), "extra": torch.ones(1)}, "w.safetensors")
    assign_state(module, {"weight": torch.ones(3, 4)}, "w.safetensors")
    assert torch.equal(module.weight, torch.ones(3, 4))


def test_cli_version_and_help(tmp_path):
    out = dsm("--version", hf_home=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith("dsm ")
    out = dsm("--help", hf_home=tmp_path)
    assert out.returncode == 0 and "models" in out.stdout
    out = dsm("no-such-command", hf_home=tmp_path)
    assert out.returncode == EXIT_USAGE


def test_cli_models_lists_registry_and_cache_state(tmp_path):
    fake_cached_repo(tmp_path, "kyutai/stt-2.6b-en", {"config.json": "{}"})
    out = dsm("models", "--json", hf_home=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = {row["name"]: row for row in json.loads(out.stdout)}
    assert rows["stt-2.6b-en"]["cached"] is True
    assert rows["stt-1b-en_fr"]["cached"] is False
    table = dsm("models", hf_home=tmp_path)
    assert table.returncode == 0
    line = next(ln for ln in table.stdout.splitlines() if "kyutai/stt-2.6b-en" in ln)
    assert "yes" in line


def test_cli_offline_and_not_cached(tmp_path):
    out = dsm("download", "stt-1b-en_fr", hf_home=tmp_path)
    assert out.returncode == EXIT_MODEL
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "not in the local cache" in out.stderr and "dsm download stt-1b-en_fr" in out.stderr


def test_cli_local_dir_missing_file(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "stt", "dim": 8}))
    out = dsm("download", str(model), hf_home=tmp_path)
    assert out.returncode == EXIT_MODEL
    assert "missing file" in out.stderr and "model.safetensors" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_corrupt_weights_in_a_local_model(fixture_dir, tmp_path, run_dsm, bria_24k):
    """A model folder whose LM file is not safetensors: one line, exit code 3, no traceback."""
    import shutil

    import soundfile

    model = tmp_path / "broken-stt"
    shutil.copytree(fixture_dir / "tiny-stt", model)
    (model / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    wav = tmp_path / "a.wav"
    soundfile.write(wav, bria_24k(1.0), 24000)
    out = run_dsm("transcribe", wav, "-m", model)
    err = out.stderr.decode()
    assert out.returncode == EXIT_MODEL, err
    assert err.count("\n") == 1 and "not a readable safetensors file" in err and "Traceback" not in err


def test_cli_weights_of_the_wrong_shape(fixture_dir, tmp_path, run_dsm, bria_24k):
    import shutil

    import soundfile

    model = tmp_path / "reshaped-stt"
    shutil.copytree(fixture_dir / "tiny-stt", model)
    state = read_safetensors(model / "model.safetensors")
    state["text_linear.weight"] = state["text_linear.weight"][:-1]
    save_file(state, str(model / "model.safetensors"))
    wav = tmp_path / "a.wav"
    soundfile.write(wav, bria_24k(1.0), 24000)
    out = run_dsm("transcribe", wav, "-m", model)
    err = out.stderr.decode()
    assert out.returncode == EXIT_MODEL, err
    assert "text_linear.weight" in err and "Traceback" not in err and err.count("\n") == 1
