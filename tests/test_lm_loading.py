"""``LM.load``: the user's code path (offline HF cache / local dir), dtypes, both depformer file layouts, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_lm_harness import reference_checkpoint, voice_inputs

from dsmcli.engine import LM, LMStream, SamplingOptions
from dsmcli.errors import ModelLoadError
from dsmcli.hub.checkpoint import load_checkpoint
from dsmcli.hub.loaders import load_lm


def _local_copy(repo: str, dest: Path) -> Path:
    """The repo's config.json + LM file in a local directory (a model dir as users may pass one)."""
    checkpoint = load_checkpoint(repo)
    dest.mkdir()
    shutil.copy(checkpoint.source.fetch("config.json"), dest / "config.json")
    shutil.copy(checkpoint.lm_path, dest / checkpoint.lm_name)
    return dest / checkpoint.lm_name


def test_default_dtype_bf16_with_float32_conditioners(tiny_tts):
    lm = load_lm(tiny_tts)
    assert lm.dtype == torch.bfloat16 and lm.device == torch.device("cpu")
    assert lm.depformer.heads[0].weight.dtype == torch.bfloat16
    params = dict(lm.conditioning.named_parameters())
    assert params and all(p.dtype == torch.float32 for p in params.values())


def test_same_weights_as_the_reference_loader(tiny_tts):
    ref = reference_checkpoint(tiny_tts).get_moshi(device="cpu", dtype=torch.float32)
    from_file = load_lm(tiny_tts, dtype=torch.float32)
    from_module = LM.from_state(from_file.config, dict(ref.state_dict()), dtype=torch.float32)  # split names
    a, b = from_file.state_dict(), from_module.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_packed_and_split_depformer_files_give_identical_outputs(tiny_tts, tiny_voices, tmp_path):
    from fixturelib.lm import save_lm

    from dsmcli.hub.files import hub_download

    packed_file = _local_copy(tiny_tts, tmp_path / "packed")
    packed_keys = set(load_file(str(packed_file)))
    assert "depformer.layers.0.self_attn.in_proj_weight" in packed_keys
    split_dir = tmp_path / "split"
    shutil.copytree(tmp_path / "packed", split_dir)
    ref = reference_checkpoint(tiny_tts).get_moshi(device="cpu", dtype=torch.float32)
    save_lm(ref, split_dir / packed_file.name, packed_depformer=False)
    assert "depformer.layers.0.self_attn.in_projs.3.weight" in set(load_file(str(split_dir / packed_file.name)))

    voice = hub_download(tiny_voices, "voices/alice.wav.1e68beda@240.safetensors")
    outputs = []
    for folder in (tmp_path / "packed", split_dir):
        lm = load_lm(folder, dtype=torch.float32)
        gen = LMStream(lm, SamplingOptions.greedy())
        state = gen.init_state(1, voice_inputs([voice], 5, "2.0"))
        outputs.append(torch.stack([gen.step(None, state).frame[0] for _ in range(12)]))
    assert torch.equal(outputs[0], outputs[1])
    assert (outputs[0][2:, 1:] >= 0).all()  # real audio tokens from the depformer


def test_missing_and_misshaped_tensors_are_named(tiny_stt, tmp_path):
    lm_file = _local_copy(tiny_stt, tmp_path / "model")
    state = load_file(str(lm_file))
    missing = {k: v for k, v in state.items() if k != "out_norm.alpha"}
    save_file(missing, str(lm_file))
    with pytest.raises(ModelLoadError, match=r"missing tensor out_norm\.alpha"):
        load_lm(tmp_path / "model")
    state["text_linear.weight"] = state["text_linear.weight"][:-1].contiguous()
    save_file(state, str(lm_file))
    with pytest.raises(ModelLoadError, match=r"text_linear\.weight"):
        load_lm(tmp_path / "model")


def test_unknown_config_key_is_a_model_error(tiny_stt, tmp_path):
    _local_copy(tiny_stt, tmp_path / "model")
    config_path = tmp_path / "model" / "config.json"
    config = json.loads(config_path.read_text())
    config["mixture_of_experts"] = 8
    config_path.write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="mixture_of_experts"):
        load_lm(tmp_path / "model")
