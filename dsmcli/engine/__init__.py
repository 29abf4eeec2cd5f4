"""The shared streaming engine: the DSM language model and its delayed-streams step loop.

Stable surface::

    lm = LM.from_state(config, state_dict, dtype=torch.bfloat16)       # the engine never reads files:
    lm = dsmcli.hub.loaders.load_lm("stt-1b-en_fr")                     # the hub does (name, repo id, dir, Checkpoint)
    gen = LMStream(lm, SamplingOptions.greedy(), hooks=StepHooks(...))
    state = gen.init_state(batch_size, condition=None)                  # ConditionInputs for TTS models
    out = gen.step(audio_codes_or_None, state, active=None)             # one 80 ms step -> StepOutput
    out.text_tokens [B]; out.audio_tokens [B, G] | None; out.frame [B, G+1] + out.frame_valid [B];
    out.extra_probs [B, heads, classes] | None; out.text_logits [B, text_card_out]
    state.reset(mask)                                                   # restart chosen slots

* ``audio_codes``: ``[B, n_q - G, 1]`` Mimi codes for the input streams (STT: all 32 codebooks; None = -1).
  The engine implements FORMAT.md §3.7 literally: at a slot's step 0 every stream reads its initial token, so
  the codes given at step 0 are never seen; the task decides which frame to feed at which step.
* ``frame`` is the time-aligned frame ``[text, audio_1..audio_G]`` of time ``offset - 1 - max(delays)``.
* Batch slots are independent: ``active`` ``[B]`` chooses who steps (inactive slots keep their state),
  ``state.reset(mask)`` restarts slots, ``gen.set_condition(state, condition, mask)`` changes their conditions.
* ``gen.project_condition(one_slot_condition)`` -> :class:`PreparedCondition`: a slot's conditions encoded and
  its cross-attention source projected once (a voice); ``init_state`` / ``set_condition`` also take a list of
  them, one per slot, and then project nothing (``gen.accepts(prepared)``: made for a stream of this kind).
* TTS hooks (:class:`StepHooks`): edit text logits, rewrite the sampled text token (the text-stream state
  machine), rewrite audio tokens (audio prefixes); ``step(..., replace_audio=...)`` skips the depformer.
* Real CFG: ``SamplingOptions(cfg_coef=2.0)`` doubles the model batch (``cfg_no_text``,
  ``init_state(cfg_masked_until=...)``); distilled CFG is just the ``cfg`` condition value.
* ``LMStream(num_generated=n)`` generates only the first ``n`` codebooks (TTS with fewer codebooks).
* ``LMStream(engine=EngineOptions(compile=True))`` compiles the model part of the step; ``static_shapes=True``
  attends over the whole KV ring from the first step (the reference's exact attention; see
  :mod:`dsmcli.engine.options`). The dtype is the model's: bfloat16 runs on AMX on recent Xeons.
* ``EngineOptions(kernels="auto"|"native"|"torch")``: the stream's native CPU kernels (the depformer's sub-steps; a
  quantized model's attention over float16 rings), decided when the stream is made. ``LM.from_state(...,
  quantize="int8", kernels=...)`` builds a quantized model; ``quantize_lm(lm, ...)`` returns one (consuming ``lm``).
* ``lm.config`` (:class:`LMConfig`) names the token ids (``text_pad_id``, ``end_of_padding_id``,
  ``text_initial_id``, ``audio_initial_id``, ``zero_id``, ``ungenerated_id``), ``delays``/``max_delay``,
  ``distilled_cfg_values`` and the extra heads' sizes.
"""

from dsmcli.engine.conditioning import ConditionInputs, ConditionTensors, TensorCondition
from dsmcli.engine.config import (
    UNGENERATED_TOKEN_ID,
    ZERO_TOKEN_ID,
    ConditionerConfig,
    ConditionerKind,
    DepformerConfig,
    FuserConfig,
    LMConfig,
    PositionalEmbedding,
    TransformerConfig,
)
from dsmcli.engine.lm import LM
from dsmcli.engine.options import EngineOptions
from dsmcli.engine.sampling import SamplingOptions, cfg_mix, sample_token
from dsmcli.engine.stream import LMStream, PreparedCondition, StepHooks, StepInfo, StepOutput, StreamState

__all__ = [
    "LM",
    "UNGENERATED_TOKEN_ID",
    "ZERO_TOKEN_ID",
    "ConditionInputs",
    "ConditionTensors",
    "ConditionerConfig",
    "ConditionerKind",
    "DepformerConfig",
    "EngineOptions",
    "FuserConfig",
    "LMConfig",
    "LMStream",
    "PositionalEmbedding",
    "PreparedCondition",
    "SamplingOptions",
    "StepHooks",
    "StepInfo",
    "StepOutput",
    "StreamState",
    "TensorCondition",
    "TransformerConfig",
    "cfg_mix",
    "sample_token",
]
