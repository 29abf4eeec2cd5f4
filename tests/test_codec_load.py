"""load_mimi (hub) from every kind of source, the config override, and load failures that name the culprit."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from dsmcli.codec import Mimi, MimiConfig
from dsmcli.codec.config import PadMode
from dsmcli.errors import ModelLoadError
from dsmcli.nn import NormKind
from dsmcli.hub.loaders import load_mimi

STT_MIMI_NAME = "mimi-pytorch-e351c8d8@125.safetensors"


@pytest.fixture(scope="module")
def tiny_repo(fixture_dir):
    return fixture_dir / "tiny-stt"


def _same_weights(a: Mimi, b: Mimi) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _tensors_on(model: Mimi, device: str) -> bool:
    return all(t.device.type == device for t in [*model.parameters(), *model.buffers()])


def test_load_from_local_dir_and_offline_hub_cache_agree(tiny_repo, tiny_stt):
    from_dir = load_mimi(tiny_repo)
    from_cache = load_mimi(tiny_stt)
    tiny = MimiConfig.from_dict(json.loads((tiny_repo / "mimi_config.json").read_text()))
    assert from_dir.config == from_cache.config == tiny
    assert from_dir.config.transformer.context == 16 and from_dir.frame_size == 1920
    assert _same_weights(from_dir, from_cache)
    assert _tensors_on(from_cache, "cpu") and not any(p.requires_grad for p in from_cache.parameters())
    codes = from_cache.encode(torch.randn(1, 1, 3 * from_cache.frame_size) * 0.1)
    assert codes.shape == (1, 32, 3) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < from_cache.cardinality


def test_load_bare_safetensors_is_released_sizes(real_mimi_path):
    mimi = load_mimi(real_mimi_path, num_codebooks=8)
    assert mimi.config == MimiConfig()
    assert (mimi.sample_rate, mimi.frame_rate, mimi.frame_size) == (24000, 12.5, 1920)
    assert mimi.num_codebooks == 8 and mimi.total_codebooks == 32
    assert _tensors_on(mimi, "cpu")
    assert sum(t.numel() for t in mimi.state_dict().values()) == 96_151_393  # FORMAT.md §0
    assert mimi.encode(torch.zeros(1, 1, 1000)).shape == (1, 8, 1)  # right-padded to one frame


def test_reference_module_names_are_accepted(tiny_repo, tmp_path):
    """Files written with the reference module names (``in_projs.0`` / ``out_projs.0``) load the same."""
    state = load_file(str(tiny_repo / STT_MIMI_NAME))
    renamed = {k.replace("self_attn.in_proj_weight", "self_attn.in_projs.0.weight")
                .replace("self_attn.out_proj.weight", "self_attn.out_projs.0.weight"): v for k, v in state.items()}
    assert renamed.keys() != state.keys()
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo)
    save_file(renamed, str(repo / STT_MIMI_NAME))
    assert _same_weights(load_mimi(repo), load_mimi(tiny_repo))


def test_corrupt_file_is_a_model_load_error(tmp_path):
    bad = tmp_path / "mimi.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}" + bytes(64))
    with pytest.raises(ModelLoadError, match="mimi.safetensors"):
        load_mimi(bad)
    with pytest.raises(ModelLoadError, match="not found"):
        load_mimi(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("wanted", [0, 33])
def test_bad_codebook_count_is_refused_before_the_file_is_read(tmp_path, wanted):
    bad = tmp_path / "mimi.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}" + bytes(64))  # reading it would fail
    with pytest.raises(ModelLoadError, match=f"mimi.safetensors: num_codebooks must be in 1..32, got {wanted}"):
        load_mimi(bad, num_codebooks=wanted)


def _repo_with(tiny_repo, tmp_path, edit) -> object:
    state = load_file(str(tiny_repo / STT_MIMI_NAME))
    edit(state)
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo)
    save_file(state, str(repo / STT_MIMI_NAME))
    return repo


def test_wrong_shapes_and_missing_tensors_are_named(tiny_repo, tmp_path):
    # Tiny weights read as the released sizes (no config override): 2 layers instead of 8.
    with pytest.raises(ModelLoadError, match=r"missing tensor encoder_transformer\.transformer\.layers\.2\."):
        load_mimi(tiny_repo / STT_MIMI_NAME)

    def reshape(state):
        state["decoder.model.2.convtr.convtr.weight"] = state["decoder.model.2.convtr.convtr.weight"][:, :-1].contiguous()

    repo = _repo_with(tiny_repo, tmp_path / "a", reshape)
    with pytest.raises(ModelLoadError, match=r"decoder\.model\.2\.convtr\.convtr\.weight has shape \(128, 63, 16\)"
                                             r" in the file, the model expects \(128, 64, 16\)"):
        load_mimi(repo)

    def drop(state):
        del state["quantizer.rvq_rest.vq.layers.3._codebook.embedding_sum"]

    repo = _repo_with(tiny_repo, tmp_path / "b", drop)
    with pytest.raises(ModelLoadError, match=r"missing tensor quantizer\.rvq_rest\.vq\.layers\.3\._codebook"):
        load_mimi(repo)


def test_config_round_trip_and_rejections():
    from moshi.models.loaders import _mimi_config

    assert MimiConfig.from_dict(_mimi_config) == MimiConfig()
    released = MimiConfig()
    assert released.seanet.ratios == (8, 6, 5, 4) and released.seanet.pad_mode is PadMode.CONSTANT
    assert released.transformer.norm is NormKind.LAYER_NORM and released.resample_stride == 2

    def variant(section: str | None, **changes):
        raw = json.loads(json.dumps(_mimi_config))
        (raw if section is None else raw[section]).update(changes)
        return raw

    with pytest.raises(ModelLoadError, match="unknown key 'wobble'"):
        MimiConfig.from_dict(variant("transformer", wobble=1))
    with pytest.raises(ModelLoadError, match="unknown key 'extra'"):
        MimiConfig.from_dict(variant(None, extra={}))
    with pytest.raises(ModelLoadError, match="gating='silu' is not supported"):
        MimiConfig.from_dict(variant("transformer", gating="silu"))
    with pytest.raises(ModelLoadError, match="causal=False"):
        MimiConfig.from_dict(variant("seanet", causal=False))
    with pytest.raises(ModelLoadError, match="rates"):
        MimiConfig.from_dict(variant(None, frame_rate=11.0))
    with pytest.raises(ModelLoadError, match="invalid Mimi config"):
        MimiConfig.from_dict(variant("seanet", pad_mode="reflect"))
    assert MimiConfig.from_dict(variant("quantizer", decay=0.9)) == released  # training-only keys ignored
