"""config.json contents of the tiny repos, shaped like the released Kyutai DSM checkpoints.

Each ``*_config`` returns the whole config.json dict (file names, task configs and LM
architecture keys, FORMAT.md §1); ``lm_part`` strips what ``CheckpointInfo`` pops.
"""

from __future__ import annotations

from typing import Any

TEXT_VOCAB = 256  # tiny SentencePiece vocabulary = text_card of every tiny LM
PAD_ID = 3
MIMI_CONFIG_NAME = "mimi_config.json"
STT_MIMI_NAME = "mimi-pytorch-e351c8d8@125.safetensors"
TTS_MIMI_NAME = "tokenizer-e351c8d8-checkpoint125.safetensors"
STT_LM_GEN = {"temp": 0.0, "temp_text": 0.0, "top_k": 250, "top_k_text": 50}
TTS_LM_GEN = {"temp": 0.6, "text_temp": 0.6}
TTS_ACOUSTIC_DELAY = 2
CFG_VALUES = ["1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0"]
# Keys popped by CheckpointInfo.from_hf_repo before the rest becomes LMModel kwargs.
NON_LM_KEYS = (
    "moshi_name",
    "mimi_name",
    "mimi_config_name",
    "tokenizer_name",
    "lora_name",
    "model_type",
    "lm_gen_config",
    "tts_config",
    "stt_config",
    "model_id",
)


def lm_part(config: dict[str, Any]) -> dict[str, Any]:
    """The LM architecture kwargs of a config.json (what ``CheckpointInfo.lm_config`` holds)."""
    return {k: v for k, v in config.items() if k not in NON_LM_KEYS}


def _backbone(card: int, context: int, max_period: int) -> dict[str, Any]:
    return {
        "dim": 64,
        "text_card": TEXT_VOCAB,
        "existing_text_padding_id": PAD_ID,
        "card": card,
        "num_heads": 4,
        "num_layers": 2,
        "hidden_scale": 4.125,
        "causal": True,
        "layer_scale": None,
        "context": context,
        "max_period": max_period,
        "gating": "silu",
        "norm": "rms_norm_f32",
        "positional_embedding": "rope",
    }


def _depformer(schedule: list[int] | None) -> dict[str, Any]:
    keys: dict[str, Any] = {
        "depformer_dim": 32,
        "depformer_dim_feedforward": 64,
        "depformer_num_heads": 2,
        "depformer_num_layers": 2,
        "depformer_layer_scale": None,
        "depformer_multi_linear": True,
        "depformer_context": 8,  # ignored by the reference (FORMAT.md §1.3)
        "depformer_max_period": 10000,
        "depformer_gating": "silu",
        "depformer_pos_emb": "none",
        "depformer_weights_per_step": True,
    }
    if schedule is not None:
        keys["depformer_weights_per_step_schedule"] = schedule
    return keys


def stt_config(card: int, *, prefix: bool) -> dict[str, Any]:
    """stt-1b-en_fr-shaped (``prefix=False``: 0.5 s delay, 4×6 extra heads) or
    stt-2.6b-en-shaped (``prefix=True``: 2.5 s delay, 1 s silence prefix, no extra heads)."""
    n_q = 32
    config: dict[str, Any] = {
        "moshi_name": "model.safetensors",
        "mimi_name": STT_MIMI_NAME,
        "mimi_config_name": MIMI_CONFIG_NAME,
        "tokenizer_name": "tokenizer_en_audio_4000.model" if prefix else "tokenizer_en_fr_audio_8000.model",
        "model_type": "stt",
        **_backbone(card, context=40, max_period=100000),
        "n_q": n_q,
        "dep_q": 0,
        **_depformer(None),  # unused with dep_q 0, present in released STT configs
        "delays": [0] * (n_q + 1),
        "demux_second_stream": False,
        "extra_heads_num_heads": 0 if prefix else 4,
        "extra_heads_dim": 6,
        "fuser": None,
        "stt_config": {
            "audio_delay_seconds": 2.5 if prefix else 0.5,
            "audio_silence_prefix_seconds": 1.0 if prefix else 0.0,
        },
        "lm_gen_config": dict(STT_LM_GEN),
    }
    return config


def _conditioners(lm_dim: int, latent_dim: int) -> dict[str, Any]:
    return {
        "speaker_wavs": {"type": "tensor", "tensor": {"dim": latent_dim}},
        "cfg": {
            "type": "lut",
            "lut": {"n_bins": len(CFG_VALUES), "dim": 16, "tokenizer": "noop", "possible_values": list(CFG_VALUES)},
        },
        "control": {"type": "lut", "lut": {"n_bins": 1, "dim": lm_dim, "tokenizer": "noop", "possible_values": ["ok"]}},
    }


def tts_config(card: int, latent_dim: int) -> dict[str, Any]:
    """tts-1.6b-en_fr-shaped: voice cross-attention, distilled CFG LUT, scheduled depformer."""
    n_q = 8
    backbone = _backbone(card, context=100, max_period=10000)
    return {
        "moshi_name": "dsm_tts_1e68beda@240.safetensors",
        "mimi_name": TTS_MIMI_NAME,
        "mimi_config_name": MIMI_CONFIG_NAME,
        "tokenizer_name": "tokenizer_spm_8k_en_fr_audio.model",
        "model_type": "tts",
        **backbone,
        "text_card_out": None,
        "n_q": n_q,
        "dep_q": n_q,
        **_depformer([0, 1, 2, 3, 4, 4, 4, 4]),
        "depformer_low_rank_embeddings": 8,
        "delays": [0, 0] + [TTS_ACOUSTIC_DELAY] * (n_q - 1),
        "demux_second_stream": True,
        "cross_attention": True,
        "conditioners": _conditioners(backbone["dim"], latent_dim),
        "fuser": {
            "sum": ["control", "cfg"],
            "cross": ["speaker_wavs"],
            "prepend": [],
            "cross_attention_pos_emb": True,
            "cross_attention_pos_emb_scale": 1,
        },
        "tts_config": {"audio_delay": 1.28, "second_stream_ahead": 2},
        "model_id": {"sig": "1e68beda", "epoch": 240},
        "lm_gen_config": dict(TTS_LM_GEN),
    }


def tts_prefix_config(card: int) -> dict[str, Any]:
    """tts-0.75b-en-public-shaped: audio-prefix voices, real CFG, ``text_card_out`` 5.

    ``conditioners: {}`` gives the empty ConditionProvider that ``TTSModel.generate`` needs;
    no fuser, no cross-attention. The depformer has one weight set per codebook (no schedule).
    """
    n_q = 8
    return {
        "moshi_name": "dsm_tts_d6ef30c7@1000.safetensors",
        "mimi_name": TTS_MIMI_NAME,
        "mimi_config_name": MIMI_CONFIG_NAME,
        "tokenizer_name": "tokenizer_spm_8k_en_fr_audio.model",
        "model_type": "tts",
        **_backbone(card, context=100, max_period=10000),
        "text_card_out": 5,
        "n_q": n_q,
        "dep_q": n_q,
        **_depformer(None),
        "depformer_low_rank_embeddings": 8,
        "delays": [0, 0] + [TTS_ACOUSTIC_DELAY] * (n_q - 1),
        "demux_second_stream": True,
        "cross_attention": False,
        "conditioners": {},
        "fuser": None,
        "tts_config": {"audio_delay": 1.28, "second_stream_ahead": 2},
        "model_id": {"sig": "d6ef30c7", "epoch": 1000},
        "lm_gen_config": dict(TTS_LM_GEN),
    }
