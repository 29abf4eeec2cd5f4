"""The reference (moshi) STT loop, aligned as dsmcli feeds audio: codes of frame t-1 at step t.

That is the reference's own `run_inference.py` alignment (the first frame's codes are given to the LM
twice), so the reference and dsmcli see exactly the same inputs at every step. Besides the greedy text
tokens, the run records what a test needs to tell a real difference from a near-tie: the top-2 margin of
the text logits at every step, and the Mimi codes of every frame with the gap between the nearest and the
second-nearest centroid at each codebook level (the reference's own ``torch.cdist`` distances).

With ``prompt_text`` / ``prompt_audio`` it prompts as Kyutai's ``stt_from_file_with_prompt_pytorch.py`` does:
the prompt audio's frames after the silence prefix, then 10 silent frames, then the audio; and the script's
``PromptHook`` as LMGen's text logits and text token hooks (``ScriptPromptHook`` below is that class).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

FRAME = 1920
PROMPT_GAP_FRAMES = 10  # the script's "bit (0.8s) of silence to separate prompt and the actual audio"


class ScriptPromptHook:
    """``PromptHook`` of ``stt_from_file_with_prompt_pytorch.py`` (kyutai-labs/delayed-streams-modeling)."""

    def __init__(self, tokenizer, prefix, padding_tokens=(0, 3)):
        self.tokenizer = tokenizer
        self.prefix_enforce = deque(self.tokenizer.encode(prefix))
        self.padding_tokens = padding_tokens

    def on_token(self, token):
        if not self.prefix_enforce:
            return
        token = token.item()
        if token in self.padding_tokens:
            pass
        elif token == self.prefix_enforce[0]:
            self.prefix_enforce.popleft()
        else:
            assert False

    def on_logits(self, logits):
        if not self.prefix_enforce:
            return
        mask = torch.zeros_like(logits, dtype=torch.bool)
        for t in self.padding_tokens:
            mask[..., t] = True
        mask[..., self.prefix_enforce[0]] = True
        logits[:] = torch.where(mask, logits, float("-inf"))


@dataclass(frozen=True)
class ReferenceRun:
    tokens: list[int]  # one text token per step
    margins: list[float]  # top-2 text logit margin per step
    stt_config: dict
    codes: np.ndarray  # [frames, n_q] Mimi codes, silence prefix, audio and suffix frames
    codec_gaps: np.ndarray  # [frames, n_q] nearest vs second-nearest centroid distance gap
    prompt_left: int = 0  # prompt tokens the script's hook still had to force at the end
    logprobs: list[float] = field(default_factory=list)  # log-probability of the (greedy) chosen token per step

    @property
    def first_frame_step(self) -> int:
        """Frame ``f``'s codes reach the LM at step ``f + first_frame_step``."""
        return 1


@contextmanager
def _recording_codebook_gaps(gaps: list[float]) -> Iterator[None]:
    """Wrap the reference's nearest-centroid search to record each call's distance gap (batch 1, T 1)."""
    from moshi.quantization.core_vq import EuclideanCodebook

    original = EuclideanCodebook._quantize

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        distances = torch.cdist(x[None], self.embedding[None], p=2)[0]
        nearest = distances.topk(2, dim=-1, largest=False).values
        gaps.append(float((nearest[:, 1] - nearest[:, 0]).min()))
        return original(self, x)

    EuclideanCodebook._quantize = quantize
    try:
        yield
    finally:
        EuclideanCodebook._quantize = original


def _frames(audio: np.ndarray) -> list[np.ndarray]:
    audio = np.asarray(audio, dtype=np.float32)
    return list(np.concatenate([audio, np.zeros((-len(audio)) % FRAME, dtype=np.float32)]).reshape(-1, FRAME))


def reference_tokens(repo: str, audio_24k: np.ndarray, codes: np.ndarray | None = None,
                     prompt_text: str | None = None, prompt_audio: np.ndarray | None = None) -> ReferenceRun:
    """Greedy text tokens of the reference for ``audio_24k``, with margins, codes and codec gaps.

    ``codes`` ``[frames, n_q]`` (e.g. dsmcli's own Mimi codes) are fed to the reference LM instead of the
    reference Mimi's; the run's ``codec_gaps`` are then still the reference Mimi's. ``prompt_text`` and
    ``prompt_audio`` (24 kHz mono) prompt the run as the reference's prompting script does (margins are then
    those of the masked logits the greedy choice is made from)."""
    from moshi.models import LMGen, loaders

    info = loaders.CheckpointInfo.from_hf_repo(repo)
    mimi = info.get_mimi(device="cpu")
    lm = info.get_moshi(device="cpu", dtype=torch.float32)
    margins: list[float] = []
    logprobs: list[float] = []

    def record(logits: torch.Tensor) -> None:
        row = logits.reshape(logits.shape[0], -1)[0].float()
        top = row.topk(2).values
        margins.append(float(top[0] - top[1]))
        logprobs.append(float(torch.log_softmax(row, dim=-1).max()))

    hook = None if prompt_text is None else ScriptPromptHook(info.get_text_tokenizer(), prompt_text)

    def on_logits(logits: torch.Tensor) -> None:
        if hook is not None:
            hook.on_logits(logits)
        record(logits)

    gen = LMGen(lm, temp=0, temp_text=0, on_text_logits_hook=on_logits,
                on_text_hook=None if hook is None else hook.on_token)
    cfg = info.stt_config
    prefix = math.ceil(cfg.get("audio_silence_prefix_seconds", 1.0) * 12.5)
    suffix = math.ceil(cfg.get("audio_delay_seconds", 5.0) * 12.5)
    silence = np.zeros(FRAME, np.float32)
    frames = [silence] * prefix
    if prompt_audio is not None:
        frames += _frames(prompt_audio) + [silence] * PROMPT_GAP_FRAMES
    frames += _frames(audio_24k) + [silence] * suffix
    tokens: list[int] = []
    mimi_codes: list[np.ndarray] = []
    gaps: list[float] = []
    with torch.no_grad(), mimi.streaming(1), gen.streaming(1), _recording_codebook_gaps(gaps):
        for index, frame in enumerate(frames):
            frame_codes = mimi.encode(torch.from_numpy(frame)[None, None])  # [1, n_q, 1]
            mimi_codes.append(frame_codes[0, :, 0].numpy())
            if codes is not None:
                frame_codes = torch.from_numpy(np.asarray(codes[index], dtype=np.int64))[None, :, None]
            if index == 0:
                tokens.append(int(gen.step(frame_codes)[0, 0, 0]))
            tokens.append(int(gen.step(frame_codes)[0, 0, 0]))
    code_array = np.stack(mimi_codes) if codes is None else np.asarray(codes)
    left = 0 if hook is None else len(hook.prefix_enforce)
    return ReferenceRun(tokens, margins, cfg, code_array, np.asarray(gaps).reshape(code_array.shape),
                        prompt_left=left, logprobs=logprobs)
