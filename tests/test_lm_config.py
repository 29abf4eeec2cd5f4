"""LMConfig parsing and the module layout of the released architectures (built on the meta device, no RAM).

The released configs (FORMAT.md §1.4) are written out here; their parameter and file-tensor counts must match
the published ones (FORMAT.md intro, §3.8) and our module tree must hold exactly the reference's tensors
(after the released-name mapping of :mod:`dsmcli.engine.checkpoint`), with the same shapes.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from dsmcli.engine import LM, LMConfig, PositionalEmbedding
from dsmcli.engine.checkpoint import file_to_module_state
from dsmcli.errors import ModelLoadError
from dsmcli.nn.gating import Activation
from dsmcli.nn.norms import NormKind

os.environ.setdefault("NO_TORCH_COMPILE", "1")

CFG_VALUES = ["1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0"]
STT_1B = {
    "dim": 2048, "text_card": 8000, "existing_text_padding_id": 3, "card": 2048, "num_heads": 16,
    "num_layers": 16, "hidden_scale": 4.125, "causal": True, "layer_scale": None, "context": 750,
    "max_period": 100000, "gating": "silu", "norm": "rms_norm_f32", "positional_embedding": "rope", "n_q": 32,
    "dep_q": 0, "delays": [0] * 33, "fuser": None, "demux_second_stream": False, "depformer_multi_linear": True,
    "depformer_dim": 1024, "depformer_num_heads": 16, "depformer_num_layers": 6, "depformer_context": 8,
    "extra_heads_num_heads": 4, "extra_heads_dim": 6,
}
STT_2B6 = dict(STT_1B, num_layers=48, num_heads=32, text_card=4000, context=375, extra_heads_num_heads=0)
TTS_1B6 = dict(
    STT_1B, context=500, max_period=10000, text_card_out=None, dep_q=32, delays=[0, 0] + [2] * 31,
    extra_heads_num_heads=0, depformer_dim=1024, depformer_num_layers=4, depformer_num_heads=16,
    depformer_dim_feedforward=3072, depformer_low_rank_embeddings=128, depformer_weights_per_step=True,
    depformer_weights_per_step_schedule=list(range(8)) + [8] * 8 + [9] * 8 + [10] * 8, depformer_pos_emb="none",
    depformer_gating="silu", depformer_layer_scale=None, depformer_max_period=10000, demux_second_stream=True,
    cross_attention=True,
    conditioners={
        "speaker_wavs": {"type": "tensor", "tensor": {"dim": 512}},
        "cfg": {"type": "lut", "lut": {"n_bins": 7, "dim": 16, "tokenizer": "noop", "possible_values": CFG_VALUES}},
        "control": {"type": "lut", "lut": {"n_bins": 1, "dim": 2048, "tokenizer": "noop", "possible_values": ["ok"]}},
    },
    fuser={"sum": ["control", "cfg"], "cross": ["speaker_wavs"], "prepend": [], "cross_attention_pos_emb": True,
           "cross_attention_pos_emb_scale": 1},
)
# name: (config, parameters, tensors in the released file)  (FORMAT.md intro and §3.8)
RELEASED = {
    "stt-1b-en_fr": (STT_1B, 989_253_632, 135),
    "stt-2.6b-en": (STT_2B6, 2_617_118_720, 323),
    "tts-1.6b-en_fr": (TTS_1B6, 1_836_550_272, 418),
}


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_layout_matches_reference(name):
    from fixturelib.lm import released_lm_state
    from moshi.models import loaders

    raw, params, file_tensors = RELEASED[name]
    ours = LM(LMConfig.from_dict(raw), device="meta", dtype=torch.bfloat16)
    assert sum(p.numel() for p in ours.parameters()) == params
    ours_state = ours.state_dict()
    assert len(ours_state) == file_tensors
    ref = loaders.get_moshi_lm(None, lm_kwargs=copy.deepcopy(raw), device="meta", dtype=torch.bfloat16)
    mapped = file_to_module_state(released_lm_state(ref), drop_depformer=ours.depformer is None)
    assert sorted(mapped) == sorted(ours_state)
    for key, tensor in mapped.items():
        assert tuple(tensor.shape) == tuple(ours_state[key].shape), key


def test_derived_values_of_tts_1b6():
    config = LMConfig.from_dict(TTS_1B6)
    assert (config.text_initial_id, config.audio_initial_id, config.text_vocab_in) == (8000, 2048, 8001)
    assert (config.zero_id, config.ungenerated_id, config.text_pad_id, config.end_of_padding_id) == (-1, -2, 3, 0)
    assert config.text_card_out == 8000 and config.max_delay == 2 and config.n_q - config.dep_q == 0
    main = config.transformer
    assert main.norm is NormKind.RMS_NORM_F32 and main.gating is Activation.SILU
    assert main.positional_embedding is PositionalEmbedding.ROPE and main.context == 500
    dep = config.depformer
    assert dep is not None and dep.num_input_projections == 11 and dep.low_rank == 128
    assert dep.transformer.num_weight_sets == 11 and dep.transformer.context is None
    assert dep.transformer.positional_embedding is PositionalEmbedding.NONE
    assert dep.transformer.weight_set(31) == 10 and dep.input_schedule[7] == 7
    ours = LM(config, device="meta")
    assert ours.transformer.layers[0].gating.linear_in.weight.shape == (2 * 5632, 2048)
    assert ours.depformer.transformer.layers[0].gating[3].linear_out.weight.shape == (1024, 2048)
    assert config.distilled_cfg_values == tuple(CFG_VALUES)
    assert LMConfig.from_dict(STT_1B).distilled_cfg_values == ()


def test_depformer_keys_default_to_the_main_transformer():
    raw = {k: v for k, v in TTS_1B6.items() if k not in ("depformer_num_layers", "depformer_max_period")}
    raw["depformer_weights_per_step_schedule"] = None
    dep = LMConfig.from_dict(raw).depformer
    assert dep.transformer.num_layers == 16 and dep.transformer.max_period == 10000
    assert dep.transformer.num_weight_sets == 32 and dep.num_input_projections == 32


@pytest.mark.parametrize(
    "change, key",
    [
        ({"flash_attention": True}, "flash_attention"),
        ({"kv_repeat": 2}, "kv_repeat"),
        ({"norm": "batch_norm"}, "norm"),
        ({"positional_embedding": "alibi"}, "positional_embedding"),
        ({"delays": [0] * 5}, "delays"),
        ({"quantize": True}, "quantize"),
        ({"lora": True}, "lora"),
        ({"depformer_kv_repeat": 2}, "depformer_kv_repeat"),
        ({"fuser": {"sum": [], "cross": [], "prepend": ["control"]}}, "fuser.prepend"),
        ({"conditioners": {"x": {"type": "wav", "wav": {"dim": 3}}}}, "conditioners.x.type"),
        ({"conditioners": {"x": {"type": "lut", "lut": {"dim": 3, "n_bins": 1, "possible_values": ["a"],
                                                       "colour": 1}}}}, "conditioners.x.lut.colour"),
        ({"dep_q": 40}, "dep_q"),
    ],
)
def test_unsupported_keys_are_named(change, key):
    with pytest.raises(ModelLoadError, match=key.replace(".", r"\.")):
        LMConfig.from_dict({**TTS_1B6, **change})


def test_ignored_training_keys_are_accepted():
    config = LMConfig.from_dict({**STT_1B, "depformer_causal": True, "gradient_checkpointing": False})
    assert config.depformer is None and config.extra_heads_num_heads == 4
