"""The DSM language model's architecture, parsed once from ``config.json`` (FORMAT.md §1.3–1.4, §3).

``LMConfig.from_dict(lm_kwargs)`` (``Checkpoint.lm_config`` in :mod:`dsmcli.hub.checkpoint`) reads the
architecture keys the hub left after popping file
names and task configs. Policy for keys:

* every key the reference ``LMModel`` understands is parsed into a typed field;
* keys that only matter for training or that the reference ignores at inference (``betas``,
  ``gradient_checkpointing``, ``depformer_causal``, ``depformer_context``, ``init_scale`` of a LUT, ...) are
  accepted and dropped (``IGNORED_KEYS``);
* anything else, and any value the engine does not implement (``kv_repeat`` != 1, ``quantize``, LoRA,
  non-causal attention, ...), raises :class:`~dsmcli.errors.ModelLoadError` naming the key: a silently
  ignored architecture key would give a model that loads and produces garbage.

Depformer (``depformer_*``) keys default to the main transformer's value of the same name, as the reference
does; ``depformer_context`` is ignored (the depformer always sees the whole step).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from dsmcli.constants import UNGENERATED_TOKEN_ID, ZERO_TOKEN_ID
from dsmcli.engine.condition_config import (
    ConditionerConfig,
    ConditionerKind,
    FuserConfig,
    conditioner_from,
    config_error,
    fuser_from,
    int_tuple,
    parse_enum,
    require,
)
from dsmcli.nn.gating import Activation
from dsmcli.nn.norms import NormKind

DISTILLED_CFG_CONDITION = "cfg"  # name of the LUT condition carrying a distilled CFG coefficient

IGNORED_KEYS = frozenset({"betas", "gradient_checkpointing", "depformer_causal", "depformer_context",
                          "depformer_betas", "lora_rank", "lora_scaling"})
_LM_KEYS = frozenset({
    "dim", "num_heads", "num_layers", "hidden_scale", "text_card", "text_card_out", "card", "n_q", "dep_q",
    "delays", "existing_text_padding_id", "existing_text_end_padding_id", "demux_second_stream",
    "demux_second_text_stream", "norm", "norm_emb", "bias_proj", "extra_heads_num_heads", "extra_heads_dim",
    "conditioners", "fuser", "quantize", "depformer_dim", "depformer_dim_feedforward", "depformer_multi_linear",
    "depformer_weights_per_step", "depformer_weights_per_step_schedule", "depformer_low_rank_embeddings",
    "depformer_pos_emb", "depformer_norm", "lora",
})
_TRANSFORMER_KEYS = frozenset({
    "num_layers", "num_heads", "dim_feedforward", "context", "max_period", "positional_embedding",
    "positional_scale", "gating", "layer_scale", "kv_repeat", "causal", "cross_attention", "skip_self_attn",
})
# Keys of a depformer transformer that may come with the ``depformer_`` prefix (besides the LM keys above).
_DEPFORMER_PREFIX = "depformer_"


class PositionalEmbedding(str, Enum):
    NONE = "none"
    SIN = "sin"  # sinusoidal embedding added to the transformer input
    ROPE = "rope"  # rotary embedding (interleaved pairs) inside self-attention
    SIN_ROPE = "sin_rope"  # both

    @property
    def uses_sin(self) -> bool:
        return self in (PositionalEmbedding.SIN, PositionalEmbedding.SIN_ROPE)

    @property
    def uses_rope(self) -> bool:
        return self in (PositionalEmbedding.ROPE, PositionalEmbedding.SIN_ROPE)


@dataclass(frozen=True)
class TransformerConfig:
    """One stack of pre-norm layers (the main backbone or the depformer).

    ``dim_feedforward`` has one entry per weight set; ``schedule[k]`` is the weight set used at step ``k``
    when the stack has per-step weights (``schedule`` None = one shared weight set).
    """

    dim: int
    num_heads: int
    num_layers: int
    dim_feedforward: tuple[int, ...]
    norm: NormKind
    gating: Activation | None  # None = plain GELU FFN (linear1/linear2)
    positional_embedding: PositionalEmbedding
    positional_scale: float
    max_period: float
    context: int | None  # attention window in steps; None = unbounded (depformer)
    layer_scale: float | None
    cross_attention: bool
    schedule: tuple[int, ...] | None = None

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def num_weight_sets(self) -> int:
        return 1 if self.schedule is None else max(self.schedule) + 1

    def weight_set(self, step: int) -> int:
        """Index of the weight set used at depformer step ``step`` (0 without per-step weights)."""
        return 0 if self.schedule is None else self.schedule[step]


def _transformer_from(raw: Mapping[str, Any], dim: int, norm: NormKind, default_ff: int,
                      schedule: tuple[int, ...] | None, prefix: str) -> TransformerConfig:
    def key(name: str) -> str:
        return prefix + name

    if raw.get("kv_repeat", 1) != 1:
        raise config_error(key("kv_repeat"), "grouped-query attention (kv_repeat != 1) is not supported")
    if not raw.get("causal", True):
        raise config_error(key("causal"), "only causal models are supported")
    if raw.get("skip_self_attn", False):
        raise config_error(key("skip_self_attn"), "layers without self-attention are not supported")
    if "num_heads" not in raw:
        raise config_error(key("num_heads"), "missing")
    num_heads = int(raw["num_heads"])
    if dim % num_heads:
        raise config_error(key("num_heads"), f"{num_heads} does not divide dim {dim}")
    n_sets = 1 if schedule is None else max(schedule) + 1
    ff = raw.get("dim_feedforward", default_ff)
    ff_sets = int_tuple(key("dim_feedforward"), ff) if isinstance(ff, (list, tuple)) else (int(ff),) * n_sets
    if len(ff_sets) != n_sets:
        raise config_error(key("dim_feedforward"), f"{len(ff_sets)} entries for {n_sets} weight sets")
    gating = raw.get("gating", "none")
    if gating == "none" and schedule is not None:
        raise config_error(key("gating"), "per-step weights need a gated FFN")
    context = raw.get("context")
    layer_scale = raw.get("layer_scale")
    return TransformerConfig(
        dim=dim,
        num_heads=num_heads,
        num_layers=int(require(raw, "num_layers")),
        dim_feedforward=ff_sets,
        norm=norm,
        gating=None if gating == "none" else parse_enum(Activation, key("gating"), gating),
        positional_embedding=parse_enum(PositionalEmbedding, key("positional_embedding"),
                                   raw.get("positional_embedding", "sin")),
        positional_scale=float(raw.get("positional_scale", 1.0)),
        max_period=float(raw.get("max_period", 10_000)),
        context=None if context is None else int(context),
        layer_scale=None if layer_scale is None else float(layer_scale),
        cross_attention=bool(raw.get("cross_attention", False)),
        schedule=schedule,
    )


@dataclass(frozen=True)
class DepformerConfig:
    """The depth transformer that samples the ``dep_q`` audio codebooks of one step, one after the other."""

    transformer: TransformerConfig
    num_codebooks: int  # dep_q
    num_input_projections: int  # depformer_in linears (1 unless multi_linear)
    input_schedule: tuple[int, ...]  # codebook k uses depformer_in[input_schedule[k]]
    low_rank: int | None  # low-rank embedding size, None = full
    out_norm: NormKind | None  # depformer_norm (per-codebook norm before the head), None = identity

    @property
    def dim(self) -> int:
        return self.transformer.dim


@dataclass(frozen=True)
class LMConfig:
    """Architecture of a DSM language model, with its special token ids named.

    Streams: 0 is text, ``1..n_q`` are audio codebooks; the first ``dep_q`` audio streams are generated by
    the depformer, the others are inputs. ``delays`` has ``n_q + 1`` entries (one per stream).
    """

    dim: int
    transformer: TransformerConfig
    text_card: int  # text vocabulary; the input table has one more row (the initial token)
    text_card_out: int  # rows of the text head
    card: int  # audio codebook size; input tables have card + 1 rows
    n_q: int
    dep_q: int
    delays: tuple[int, ...]
    text_pad_id: int  # existing_text_padding_id (3 in the releases)
    end_of_padding_id: int  # existing_text_end_padding_id (0): a word starts at the next token
    demux_second_stream: bool  # text tokens carry a second (lookahead) stream: (second + 1) * (text_card + 1) + main
    bias_proj: bool  # heads have a bias
    extra_heads_num_heads: int
    extra_heads_dim: int
    depformer: DepformerConfig | None
    conditioners: tuple[ConditionerConfig, ...] = ()
    fuser: FuserConfig | None = None

    zero_id = ZERO_TOKEN_ID
    ungenerated_id = UNGENERATED_TOKEN_ID

    @property
    def text_initial_id(self) -> int:
        """Text token fed at the start of every stream (never produced by the head)."""
        return self.text_card

    @property
    def audio_initial_id(self) -> int:
        """Audio token fed at the start of every stream (never produced by the heads)."""
        return self.card

    @property
    def text_vocab_in(self) -> int:
        """Rows of the text embedding table (text_card + 1); also the base of the demuxed second stream."""
        return self.text_card + 1

    @property
    def num_streams(self) -> int:
        return self.n_q + 1

    @property
    def max_delay(self) -> int:
        return max(self.delays)

    def conditioner(self, name: str) -> ConditionerConfig | None:
        return next((c for c in self.conditioners if c.name == name), None)

    @property
    def distilled_cfg_values(self) -> tuple[str, ...]:
        """Values of the ``cfg`` LUT condition (CFG distillation, e.g. "1.0".."4.0"); empty if the model has none,
        in which case guidance is real CFG (``SamplingOptions.cfg_coef``)."""
        cfg = self.conditioner(DISTILLED_CFG_CONDITION)
        return () if cfg is None or cfg.kind is not ConditionerKind.LUT else cfg.possible_values

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> LMConfig:
        """Parse the architecture keys of config.json (see the module docstring for the key policy)."""
        _check_keys(raw)
        for flag in ("quantize", "lora"):
            if raw.get(flag, False):
                raise config_error(flag, "quantized and LoRA checkpoints are not supported")
        if raw.get("norm_emb", False):
            raise config_error("norm_emb", "normalised embeddings are not supported")
        dim = int(require(raw, "dim"))
        n_q, dep_q = int(require(raw, "n_q")), int(raw.get("dep_q", 0))
        if not 0 <= dep_q <= n_q:
            raise config_error("dep_q", f"{dep_q} is not within 0..n_q={n_q}")
        delays = int_tuple("delays", raw.get("delays", [0] * (n_q + 1)))
        if len(delays) != n_q + 1 or min(delays) < 0:
            raise config_error("delays", f"expected {n_q + 1} non-negative delays, got {list(delays)}")
        norm = parse_enum(NormKind, "norm", raw.get("norm", "layer_norm"))
        main_raw = {k: v for k, v in raw.items() if k in _TRANSFORMER_KEYS and k != "dim_feedforward"}
        transformer = _transformer_from(main_raw, dim, norm, int(float(raw.get("hidden_scale", 4)) * dim), None, "")
        if transformer.context is None:
            raise config_error("context", "the main transformer needs an attention context")
        conditioners = tuple(conditioner_from(n, c, dim) for n, c in (raw.get("conditioners") or {}).items())
        text_card = int(require(raw, "text_card"))
        demux = raw.get("demux_second_stream", raw.get("demux_second_text_stream", False))
        return cls(
            dim=dim, transformer=transformer, text_card=text_card,
            text_card_out=int(raw.get("text_card_out") or text_card), card=int(require(raw, "card")),
            n_q=n_q, dep_q=dep_q, delays=delays,
            text_pad_id=int(raw.get("existing_text_padding_id", 3)),
            end_of_padding_id=int(raw.get("existing_text_end_padding_id", 0)),
            demux_second_stream=bool(demux), bias_proj=bool(raw.get("bias_proj", False)),
            extra_heads_num_heads=int(raw.get("extra_heads_num_heads", 0)),
            extra_heads_dim=int(raw.get("extra_heads_dim", 6)),
            depformer=_depformer_from(raw, dim, dep_q, norm) if dep_q > 0 else None,
            conditioners=conditioners,
            fuser=fuser_from(raw.get("fuser"), {c.name for c in conditioners}),
        )


def _check_keys(raw: Mapping[str, Any]) -> None:
    for key in raw:
        if key == "dim_feedforward":
            raise config_error(key, "the main FFN width comes from hidden_scale")
        if key in _LM_KEYS or key in _TRANSFORMER_KEYS or key in IGNORED_KEYS:
            continue
        if key.startswith(_DEPFORMER_PREFIX) and key.removeprefix(_DEPFORMER_PREFIX) in _TRANSFORMER_KEYS:
            continue
        if key in ("weights_per_step", "weights_per_step_schedule"):
            raise config_error(key, "per-step weights in the main transformer are not supported")
        raise config_error(key, "unknown configuration key (this dsmcli version does not know this architecture)")


def _depformer_from(raw: Mapping[str, Any], dim: int, dep_q: int, norm: NormKind) -> DepformerConfig:
    """The depformer transformer: main transformer keys overridden by their ``depformer_`` versions."""
    dep_dim = int(raw.get("depformer_dim", 256))
    per_step = bool(raw.get("depformer_weights_per_step", False))
    sched_raw = raw.get("depformer_weights_per_step_schedule")
    schedule = None if sched_raw is None else int_tuple("depformer_weights_per_step_schedule", sched_raw)
    if schedule is not None and (len(schedule) != dep_q or min(schedule) < 0):
        raise config_error("depformer_weights_per_step_schedule", f"expected {dep_q} non-negative entries")
    layer_schedule = (schedule or tuple(range(dep_q))) if per_step else None
    dep_raw = {k: v for k, v in raw.items() if k in _TRANSFORMER_KEYS and k != "dim_feedforward"}
    dep_raw.update({k.removeprefix(_DEPFORMER_PREFIX): v for k, v in raw.items()
                    if k.startswith(_DEPFORMER_PREFIX) and k.removeprefix(_DEPFORMER_PREFIX) in _TRANSFORMER_KEYS})
    dep_raw.pop("num_heads", None)
    if "depformer_num_heads" not in raw:
        raise config_error("depformer_num_heads", "missing (needed when dep_q > 0)")
    dep_raw["num_heads"] = raw["depformer_num_heads"]
    if raw.get("depformer_dim_feedforward") is not None:
        dep_raw["dim_feedforward"] = raw["depformer_dim_feedforward"]
    dep_raw.update(positional_embedding=raw.get("depformer_pos_emb", "sin"), context=None, cross_attention=False)
    default_ff = int(float(raw.get("hidden_scale", 4)) * dep_dim)
    transformer = _transformer_from(dep_raw, dep_dim, norm, default_ff, layer_schedule, _DEPFORMER_PREFIX)
    if raw.get("depformer_multi_linear", False):
        input_schedule = schedule if schedule is not None else tuple(range(dep_q))
    else:
        input_schedule = (0,) * dep_q
    low_rank = raw.get("depformer_low_rank_embeddings")
    out_norm = raw.get("depformer_norm")
    return DepformerConfig(
        transformer=transformer, num_codebooks=dep_q, num_input_projections=max(input_schedule) + 1,
        input_schedule=input_schedule, low_rank=None if low_rank is None else int(low_rank),
        out_norm=None if out_norm is None else parse_enum(NormKind, "depformer_norm", out_norm),
    )
