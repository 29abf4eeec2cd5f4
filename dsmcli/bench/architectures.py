"""The released checkpoints' ``config.json`` contents, so a model's exact architecture can be built without the Hub.

``dsm bench --random-weights --model stt-1b-en_fr`` builds the registry model with random weights from this
table: no download, so any device can be compared. Values are FORMAT.md §1.4 (architecture) and §2 (Mimi:
the released sizes, i.e. no ``mimi_config_name``). They match the published parameter counts (989,253,632 for
stt-1b, 2,617,118,720 for stt-2.6b, 1,836,550,272 for tts-1.6b: tests/test_bench_models.py).
``tts-0.75b-en-public`` is approximate: its head count, context, RoPE period and depformer shape are not
published (FORMAT.md §8.2); the values below are the tts-1.6b ones scaled to its 24 × 1024 backbone.
"""

from __future__ import annotations

import copy
from typing import Any

from dsmcli.errors import UsageError

STT_MIMI_NAME = "mimi-pytorch-e351c8d8@125.safetensors"
TTS_MIMI_NAME = "tokenizer-e351c8d8-checkpoint125.safetensors"
STT_LM_GEN = {"temp": 0.0, "temp_text": 0.0, "top_k": 250, "top_k_text": 50}
TTS_LM_GEN = {"temp": 0.6, "text_temp": 0.6}
N_Q = 32
CARD = 2048
TTS_ACOUSTIC_DELAY = 2
CFG_VALUES = ["1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0"]

_BACKBONE: dict[str, Any] = {
    "dim": 2048, "num_heads": 16, "num_layers": 16, "hidden_scale": 4.125, "causal": True, "layer_scale": None,
    "gating": "silu", "norm": "rms_norm_f32", "positional_embedding": "rope", "card": CARD,
    "existing_text_padding_id": 3,
}
_STT_1B: dict[str, Any] = {
    "moshi_name": "model.safetensors", "mimi_name": STT_MIMI_NAME, "tokenizer_name": "tokenizer_en_fr_audio_8000.model",
    "model_type": "stt", **_BACKBONE, "text_card": 8000, "context": 750, "max_period": 100000,
    "n_q": N_Q, "dep_q": 0, "delays": [0] * (N_Q + 1), "fuser": None, "demux_second_stream": False,
    "extra_heads_num_heads": 4, "extra_heads_dim": 6,
    "stt_config": {"audio_delay_seconds": 0.5, "audio_silence_prefix_seconds": 0.0}, "lm_gen_config": STT_LM_GEN,
}
_STT_2B6: dict[str, Any] = dict(
    _STT_1B, tokenizer_name="tokenizer_en_audio_4000.model", num_layers=48, num_heads=32, text_card=4000,
    context=375, extra_heads_num_heads=0,
    stt_config={"audio_delay_seconds": 2.5, "audio_silence_prefix_seconds": 1.0},
)
_TTS_DEPFORMER: dict[str, Any] = {
    "depformer_dim": 1024, "depformer_num_layers": 4, "depformer_num_heads": 16, "depformer_dim_feedforward": 3072,
    "depformer_low_rank_embeddings": 128, "depformer_multi_linear": True, "depformer_weights_per_step": True,
    "depformer_pos_emb": "none", "depformer_gating": "silu", "depformer_layer_scale": None,
    "depformer_max_period": 10000,
}
_TTS_1B6: dict[str, Any] = {
    "moshi_name": "dsm_tts_1e68beda@240.safetensors", "mimi_name": TTS_MIMI_NAME,
    "tokenizer_name": "tokenizer_spm_8k_en_fr_audio.model", "model_type": "tts", **_BACKBONE,
    "text_card": 8000, "text_card_out": None, "context": 500, "max_period": 10000, "n_q": N_Q, "dep_q": N_Q,
    "delays": [0, 0] + [TTS_ACOUSTIC_DELAY] * (N_Q - 1), **_TTS_DEPFORMER,
    "depformer_weights_per_step_schedule": list(range(8)) + [8] * 8 + [9] * 8 + [10] * 8,
    "demux_second_stream": True, "cross_attention": True,
    "conditioners": {
        "speaker_wavs": {"type": "tensor", "tensor": {"dim": 512}},
        "cfg": {"type": "lut", "lut": {"n_bins": len(CFG_VALUES), "dim": 16, "tokenizer": "noop",
                                       "possible_values": CFG_VALUES}},
        "control": {"type": "lut", "lut": {"n_bins": 1, "dim": 2048, "tokenizer": "noop", "possible_values": ["ok"]}},
    },
    "fuser": {"sum": ["control", "cfg"], "cross": ["speaker_wavs"], "prepend": [], "cross_attention_pos_emb": True,
              "cross_attention_pos_emb_scale": 1},
    "tts_config": {"audio_delay": 1.28, "second_stream_ahead": 2},
    "model_id": {"sig": "1e68beda", "epoch": 240}, "lm_gen_config": TTS_LM_GEN,
}
_TTS_0B75_N_Q = 16
_TTS_0B75: dict[str, Any] = {
    "moshi_name": "dsm_tts_d6ef30c7@1000.safetensors", "mimi_name": TTS_MIMI_NAME,
    "tokenizer_name": "tokenizer_spm_8k_en_fr_audio.model", "model_type": "tts",
    **dict(_BACKBONE, dim=1024, num_layers=24), "text_card": 8000, "text_card_out": 5, "context": 500,
    "max_period": 10000, "n_q": _TTS_0B75_N_Q, "dep_q": _TTS_0B75_N_Q,
    "delays": [0, 0] + [TTS_ACOUSTIC_DELAY] * (_TTS_0B75_N_Q - 1), **_TTS_DEPFORMER,
    "demux_second_stream": True, "cross_attention": False, "conditioners": {}, "fuser": None,
    "tts_config": {"audio_delay": 1.28, "second_stream_ahead": 2},
    "model_id": {"sig": "d6ef30c7", "epoch": 1000}, "lm_gen_config": TTS_LM_GEN,
}

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "stt-1b-en_fr": _STT_1B,
    "stt-1b-en_fr-candle": _STT_1B,
    "stt-2.6b-en": _STT_2B6,
    "tts-1.6b-en_fr": _TTS_1B6,
    "tts-0.75b-en-public": _TTS_0B75,
}
APPROXIMATE = frozenset({"tts-0.75b-en-public"})  # architecture partly guessed (see the module docstring)


def released_config(name: str) -> dict[str, Any]:
    """A copy of the ``config.json`` of registry model ``name``. UsageError for a name not in the table."""
    if name not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise UsageError(f"no built-in architecture for {name!r} (known: {known}); for another model pass a local "
                         "directory whose config.json describes it")
    return copy.deepcopy(ARCHITECTURES[name])
