"""Shared helpers of the LM / step-engine parity tests: reference runs, the near-tie rule, TTS drivers.

The reference (``moshi``) is only imported here and in tests. Both sides run greedy in float32 on the same
weights; with random weights near-ties happen, so tokens are compared where the reference's top-2 margin
exceeds ``NEAR_TIE`` and free-running sequences may part only at such a near-tie (the test names the step).
"""

from __future__ import annotations

import os
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor

os.environ.setdefault("NO_TORCH_COMPILE", "1")

from dsmcli.engine import (
    LM,
    ConditionInputs,
    EngineOptions,
    LMStream,
    SamplingOptions,
    StepHooks,
    StepInfo,
    TensorCondition,
)

NEAR_TIE = 1e-3  # reference top-2 logit margin under which a token disagreement is a tie, not a bug
LOGIT_RTOL = 1e-4  # per step: max |ours - ref| <= LOGIT_RTOL * max |ref|
PROB_ATOL = 1e-5  # extra-head probabilities
# bfloat16 runs: 4 units in the last place of the largest logit (a bf16 ulp is 2**-8 .. 2**-7 of the value)
BF16_LOGIT_RTOL = 4 * 2**-7


def top2_margin(logits: Tensor) -> Tensor:
    """``[..., V]`` -> ``[...]`` difference between the two largest logits."""
    top = logits.float().topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def relative_error(ours: Tensor, ref: Tensor) -> Tensor:
    """Per leading index: ``max |ours - ref| / max |ref|`` over the last dim(s) of ``[T, ...]``."""
    diff = (ours.float() - ref.float()).flatten(1).abs().amax(1)
    return diff / ref.float().flatten(1).abs().amax(1)


def assert_greedy_match(ours: Tensor, ref: Tensor, ref_logits: Tensor, what: str) -> int:
    """Tokens ``[T, ...]`` equal wherever the reference margin exceeds ``NEAR_TIE``. Returns the number of
    near-tie steps that were skipped."""
    clear = top2_margin(ref_logits) > NEAR_TIE
    wrong = (ours != ref) & clear
    if wrong.any():
        step = int(wrong.nonzero()[0, 0])
        raise AssertionError(f"{what}: greedy token differs at step {step} (ours {ours[step].tolist()}, "
                             f"ref {ref[step].tolist()}, ref margin {float(top2_margin(ref_logits)[step]):.2e})")
    return int((~clear).sum())


def assert_free_run_equal(ours: Tensor, ref: Tensor, ref_logits: Tensor, what: str) -> None:
    """Free-running token sequences ``[T, ...]`` are equal, or part at a reference near-tie (warned, named)."""
    differs = (ours != ref).reshape(ours.shape[0], -1).any(1)
    if not differs.any():
        return
    step = int(differs.nonzero()[0, 0])
    margin = float(top2_margin(ref_logits[step]).min())
    message = f"{what}: free-running outputs part at step {step} (reference top-2 margin {margin:.2e})"
    if margin > NEAR_TIE:
        raise AssertionError(message)
    warnings.warn(message + ": a true near-tie", stacklevel=2)


# ------------------------------------------------------------------------------------------------ STT


@dataclass(frozen=True)
class SttRun:
    tokens: Tensor  # [T] text token of every step
    logits: Tensor  # [T, V] float32
    extra: Tensor | None  # [T, heads, classes]


def run_ref_stt(ref_lm: Any, codes: Tensor) -> SttRun:
    """Reference ``LMGen`` greedy, feeding ``codes[:, :, t]`` at step ``t`` (batch 1)."""
    from moshi.models.lm import LMGen

    logits: list[Tensor] = []
    gen = LMGen(ref_lm, temp=0, temp_text=0, on_text_logits_hook=lambda x: logits.append(x[0, 0, 0].float().clone()))
    tokens, extras = [], []
    with gen.streaming(1):
        for t in range(codes.shape[-1]):
            frame, extra = gen.step_with_extra_heads(codes[:, :, t : t + 1])
            tokens.append(int(frame[0, 0, 0]))
            if extra:
                extras.append(torch.stack([p[0, 0] for p in extra]).float())
    return SttRun(torch.tensor(tokens), torch.stack(logits), torch.stack(extras) if extras else None)


def run_our_stt(lm: LM, codes: Tensor, forced: Tensor | None = None, engine: EngineOptions | None = None) -> SttRun:
    """Our engine greedy on ``codes`` ``[1, K, T]``; ``forced`` ``[T]`` teacher-forces the text stream."""
    hooks = StepHooks() if forced is None else StepHooks(text_token=lambda tok, info: forced[info.offsets])
    gen = LMStream(lm, SamplingOptions.greedy(), hooks=hooks, engine=engine)
    state = gen.init_state(1)
    tokens, logits, extras = [], [], []
    for t in range(codes.shape[-1]):
        out = gen.step(codes[:, :, t], state)
        assert bool(out.frame_valid[0])
        tokens.append(int(out.frame[0, 0]))
        logits.append(out.text_logits[0])
        if out.extra_probs is not None:
            extras.append(out.extra_probs[0].float())
    return SttRun(torch.tensor(tokens), torch.stack(logits), torch.stack(extras) if extras else None)


def encode_speech(ref_mimi: Any, wav: np.ndarray) -> Tensor:
    """Mimi codes ``[1, K, T]`` of float32 mono 24 kHz speech, with the reference codec (offline encode)."""
    with torch.no_grad():
        return ref_mimi.encode(torch.from_numpy(wav)[None, None])


def reference_checkpoint(repo: str) -> Any:
    from moshi.models.loaders import CheckpointInfo

    return CheckpointInfo.from_hf_repo(repo)


# ------------------------------------------------------------------------------------------------ TTS


def voice_inputs(voice_files: list[Path], max_speakers: int, cfg_value: str | None) -> ConditionInputs:
    """Our :class:`ConditionInputs` for one slot, built like the reference ``make_condition_attributes``."""
    tensor, mask = None, None
    for slot, path in enumerate(voice_files):
        emb = load_file(str(path))["speaker_wavs"]  # [1, D, T]
        if tensor is None:
            tensor = torch.zeros(1, max_speakers, emb.shape[2], emb.shape[1])
            mask = torch.zeros(1, max_speakers, emb.shape[2], dtype=torch.bool)
        tensor[:, slot] = emb.transpose(1, 2)
        mask[:, slot] = True
    tensors = {}
    if tensor is not None:
        tensors["speaker_wavs"] = TensorCondition(tensor.view(1, -1, tensor.shape[-1]), mask.view(1, -1))
    return ConditionInputs(values={"control": ["ok"], "cfg": [cfg_value]}, tensors=tensors)


class OurTTSRun:
    """Drives :class:`LMStream` the way the reference ``TTSModel.generate`` drives ``LMGen`` (same state machine,
    same hooks, same audio-prefix handling), for a batch of scripts. Frames come out as ``[B, 1 + G]`` per step."""

    def __init__(self, tts: Any, lm: LM, entries: list[list[Any]], condition: ConditionInputs | None,
                 prefixes: list[Tensor] | None = None, options: SamplingOptions | None = None,
                 num_generated: int | None = None):
        self.tts, self.lm = tts, lm
        self.states = [tts.machine.new_state(e) for e in entries]
        self.text_prefixes = None if prefixes is None else [deque(p[0].tolist()) for p in prefixes]
        self.audio_prefixes = None if prefixes is None else [self._delayed_prefix(p) for p in prefixes]
        masked = None if prefixes is None else [p.shape[-1] + tts.delay_steps for p in prefixes]
        options = SamplingOptions.greedy() if options is None else options
        hooks = StepHooks(text_token=self._on_text, audio_tokens=self._on_audio)
        self.gen = LMStream(lm, options, hooks=hooks, cfg_no_text=True, num_generated=num_generated)
        self.state = self.gen.init_state(len(entries), condition, cfg_masked_until=masked)

    def _delayed_prefix(self, prefix: Tensor) -> deque:
        delays = [d + self.tts.delay_steps for d in self.lm.config.delays[1:]]
        codes = prefix[1:]
        out = torch.full((codes.shape[0], codes.shape[1] + max(delays)), -2, dtype=torch.long)
        for k, d in enumerate(delays):
            out[k, d : d + codes.shape[1]] = codes[k]
        return deque(out.t())

    def _on_text(self, tokens: Tensor, info: StepInfo) -> Tensor:
        out = []
        for b, token in enumerate(tokens.tolist()):
            if self.text_prefixes is not None and self.text_prefixes[b]:
                out.append(self.text_prefixes[b].popleft())
            else:
                out.append(self.tts.machine.process(int(info.offsets[b]), self.states[b], token)[0])
        return torch.tensor(out, dtype=torch.long)

    def _on_audio(self, audio: Tensor, info: StepInfo) -> Tensor:
        delays = torch.tensor(self.lm.config.delays[1 : audio.shape[1] + 1])
        audio = torch.where(info.offsets[:, None] < delays + self.tts.delay_steps, -1, audio)
        if self.audio_prefixes is not None:
            for b, prefix in enumerate(self.audio_prefixes):
                if prefix:
                    codes = prefix.popleft()[: audio.shape[1]]
                    audio[b] = torch.where(codes != -2, codes, audio[b])
        return audio

    def run(self, steps: int) -> Tensor:
        """``[T, B, 1 + G]`` frames of the steps whose frame is valid (as the reference's ``frames`` list)."""
        frames = []
        skip = torch.full((len(self.states), self.gen.num_generated), -1, dtype=torch.long)
        for offset in range(steps):
            replace = skip if offset < self.tts.delay_steps else None
            out = self.gen.step(None, self.state, replace_audio=replace)
            if bool(out.frame_valid.all()):
                frames.append(out.frame.clone())
        return torch.stack(frames)


def ref_tts_frames(tts: Any, entries: list[list[Any]], attributes: list[Any], prefixes: list[Tensor] | None = None,
                   steps: int = 0) -> Tensor:
    """Reference ``TTSModel.generate`` frames ``[T, B, 1 + G]`` for at most ``steps`` steps (greedy)."""
    tts.max_gen_length = steps
    result = tts.generate(entries, attributes, prefixes=prefixes)
    return torch.stack([f[:, :, 0] for f in result.frames])
