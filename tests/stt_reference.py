"""The reference (moshi) STT loop, aligned as dsmcli feeds audio: codes of frame t-1 at step t.

That is the reference's own `run_inference.py` alignment (the first frame's codes are given to the LM
twice), so the reference and dsmcli see exactly the same inputs at every step.
"""

from __future__ import annotations

import math

import numpy as np
import torch

FRAME = 1920


def reference_tokens(repo: str, audio_24k: np.ndarray) -> tuple[list[int], list[float], dict]:
    """Greedy text tokens and top-2 margins of the reference for ``audio_24k``; plus the stt_config."""
    from moshi.models import LMGen, loaders

    info = loaders.CheckpointInfo.from_hf_repo(repo)
    mimi = info.get_mimi(device="cpu")
    lm = info.get_moshi(device="cpu", dtype=torch.float32)
    margins: list[float] = []

    def record(logits: torch.Tensor) -> None:
        top = logits.reshape(logits.shape[0], -1)[0].float().topk(2).values
        margins.append(float(top[0] - top[1]))

    gen = LMGen(lm, temp=0, temp_text=0, on_text_logits_hook=record)
    cfg = info.stt_config
    prefix = math.ceil(cfg.get("audio_silence_prefix_seconds", 1.0) * 12.5)
    suffix = math.ceil(cfg.get("audio_delay_seconds", 5.0) * 12.5)
    audio = np.asarray(audio_24k, dtype=np.float32)
    audio = np.concatenate([audio, np.zeros((-len(audio)) % FRAME, dtype=np.float32)])
    frames = [np.zeros(FRAME, np.float32)] * prefix + list(audio.reshape(-1, FRAME))
    frames += [np.zeros(FRAME, np.float32)] * suffix
    tokens: list[int] = []
    with torch.no_grad(), mimi.streaming(1), gen.streaming(1):
        for index, frame in enumerate(frames):
            codes = mimi.encode(torch.from_numpy(frame)[None, None])
            if index == 0:
                tokens.append(int(gen.step(codes)[0, 0, 0]))
            tokens.append(int(gen.step(codes)[0, 0, 0]))
    return tokens, margins, cfg
