"""The reference (moshi) STT loop, aligned as dsmcli feeds audio: codes of frame t-1 at step t.

That is the reference's own `run_inference.py` alignment (the first frame's codes are given to the LM
twice), so the reference and dsmcli see exactly the same inputs at every step. Besides the greedy text
tokens, the run records what a test needs to tell a real difference from a near-tie: the top-2 margin of
the text logits at every step, and the Mimi codes of every frame with the gap between the nearest and the
second-nearest centroid at each codebook level (the reference's own ``torch.cdist`` distances).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

FRAME = 1920


@dataclass(frozen=True)
class ReferenceRun:
    tokens: list[int]  # one text token per step
    margins: list[float]  # top-2 text logit margin per step
    stt_config: dict
    codes: np.ndarray  # [frames, n_q] Mimi codes, silence prefix, audio and suffix frames
    codec_gaps: np.ndarray  # [frames, n_q] nearest vs second-nearest centroid distance gap
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


def reference_tokens(repo: str, audio_24k: np.ndarray, codes: np.ndarray | None = None) -> ReferenceRun:
    """Greedy text tokens of the reference for ``audio_24k``, with margins, codes and codec gaps.

    ``codes`` ``[frames, n_q]`` (e.g. dsmcli's own Mimi codes) are fed to the reference LM instead of the
    reference Mimi's; the run's ``codec_gaps`` are then still the reference Mimi's."""
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

    gen = LMGen(lm, temp=0, temp_text=0, on_text_logits_hook=record)
    cfg = info.stt_config
    prefix = math.ceil(cfg.get("audio_silence_prefix_seconds", 1.0) * 12.5)
    suffix = math.ceil(cfg.get("audio_delay_seconds", 5.0) * 12.5)
    audio = np.asarray(audio_24k, dtype=np.float32)
    audio = np.concatenate([audio, np.zeros((-len(audio)) % FRAME, dtype=np.float32)])
    frames = [np.zeros(FRAME, np.float32)] * prefix + list(audio.reshape(-1, FRAME))
    frames += [np.zeros(FRAME, np.float32)] * suffix
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
    return ReferenceRun(tokens, margins, cfg, code_array, np.asarray(gaps).reshape(code_array.shape), logprobs)
