"""Experimental STT prompting (FORMAT.md §5.6), as Kyutai's ``stt_from_file_with_prompt_pytorch.py`` does it.

* **Audio prompt**: its frames are fed after the silence prefix, then ``GAP_FRAMES`` silent frames (0.8 s),
  then the input. Word times stay relative to the input: the time offset grows by this lead's duration.
* **Text prompt**: its SentencePiece ids are forced, in order, as the first text the model writes. Until the
  last one is out, the text logits of every token except end-of-padding, PAD and the next prompt id are set to
  −inf (the reference's ``PromptHook.on_logits``), and an emitted prompt id moves to the next one
  (``PromptHook.on_token``). Each batch slot spells the prompt from its own first step.
* **The transcript holds the input only**: text tokens of steps before the input's time 0 (the silence prefix,
  the prompt audio and the gap, behind the text delay) and of steps until the text prompt is spelled out are
  dropped; end-of-padding boundaries stay. The reference prints the prompt's text, or with
  ``--cut-prompt-transcript`` cuts at the end of the prompt audio (keeping what the model writes in the gap).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dsmcli.constants import FRAME_RATE, FRAME_SIZE
from dsmcli.engine import StepHooks, StepInfo
from dsmcli.errors import InputError, OptionError, OptionInputError

GAP_FRAMES = 10  # silent frames between the prompt audio and the input (the reference's 0.8 s)


@dataclass(frozen=True)
class SttPrompt:
    """What to prompt with: ``text`` to force, ``audio`` (float32 mono at 24 kHz) to feed before the input."""

    text: str | None = None
    audio: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.text is not None and not self.text.strip():
            raise OptionError("prompt", "is empty")
        if self.audio is not None and len(self.audio) == 0:
            raise OptionError("prompt_audio", "has no samples")

    def lead_frames(self) -> np.ndarray:
        """``[n, FRAME_SIZE]``: the prompt audio, zero-padded to whole frames, then the gap (none without audio)."""
        if self.audio is None:
            return np.zeros((0, FRAME_SIZE), dtype=np.float32)
        audio = np.asarray(self.audio, dtype=np.float32).reshape(-1)
        audio = np.concatenate([audio, np.zeros((-len(audio)) % FRAME_SIZE, dtype=np.float32)])
        return np.concatenate([audio.reshape(-1, FRAME_SIZE), np.zeros((GAP_FRAMES, FRAME_SIZE), np.float32)])


def load_prompt_audio(path: str) -> np.ndarray:
    """The whole prompt file as float32 mono at 24 kHz (``InputError`` if it cannot be decoded)."""
    from dsmcli.audio import STDIN, open_audio

    if path == STDIN:
        raise OptionError("prompt_audio", "needs a file (stdin is for the input)")
    try:
        with open_audio(Path(path)) as source:
            return np.concatenate(list(source))
    except InputError as error:
        raise OptionInputError("prompt_audio", str(error)) from None


def prompt_token_ids(tokenizer: Any, text: str, special_max: int) -> list[int]:
    """SentencePiece ids of ``text`` (as the reference encodes it). Ids ``<= special_max`` (unknown pieces,
    which the tokenizer maps to end-of-padding) could never be spelled: refuse the characters behind them."""
    ids = [int(i) for i in tokenizer.encode(text)]
    if all(i > special_max for i in ids):
        return ids
    unknown = sorted({c for c in text if not c.isspace() and any(i <= special_max for i in tokenizer.encode(c))})
    what = " ".join(unknown) if unknown else repr(text)
    raise OptionError("prompt", f": the model's vocabulary cannot spell {what}; leave those out")


class PromptForcing:
    """Per-slot forcing of the text prompt ``ids``; ``free_ids`` (EPAD, PAD) stay allowed in between.

    ``hooks`` go into :class:`~dsmcli.engine.LMStream`. They read tokens back to the host only while some slot
    is still spelling its prompt."""

    def __init__(self, ids: Sequence[int], batch_size: int, free_ids: Sequence[int]) -> None:
        self.ids, self.free_ids = tuple(ids), list(free_ids)
        self.position = [len(self.ids)] * batch_size  # index of each slot's next id; len(ids) = done
        self.done_step = [-1] * batch_size  # the slot step that wrote its last prompt id

    @property
    def hooks(self) -> StepHooks:
        return StepHooks(text_logits=self.text_logits, text_token=self.text_token)

    def start(self, slot: int) -> None:
        """Slot ``slot`` starts a new input: it spells the prompt from its next step."""
        self.position[slot], self.done_step[slot] = 0, -1

    def spelling(self, slot: int, step: int) -> bool:
        """True if the token of ``step`` was written while the slot's prompt was not yet spelled out."""
        return self.position[slot] < len(self.ids) or step <= self.done_step[slot]

    def _pending(self) -> list[int]:
        return [i for i, p in enumerate(self.position) if p < len(self.ids)]

    def text_logits(self, logits: Tensor, info: StepInfo) -> Tensor:
        """``[B, V]``: −inf except EPAD, PAD and the next prompt id in the rows still spelling."""
        rows = self._pending()
        if not rows:
            return logits
        allowed = torch.ones_like(logits, dtype=torch.bool)
        allowed[rows] = False
        allowed[:, self.free_ids] = True
        allowed[rows, [self.ids[self.position[i]] for i in rows]] = True
        return logits.masked_fill(~allowed, -math.inf)

    def text_token(self, tokens: Tensor, info: StepInfo) -> Tensor:
        """Advance each active slot whose sampled token ``[B]`` is its next prompt id (tokens unchanged)."""
        rows = self._pending()
        if not rows:
            return tokens
        values, active, offsets = (t.tolist() for t in (tokens, info.active, info.offsets))
        for i in rows:
            if active[i] and values[i] == self.ids[self.position[i]]:
                self.position[i] += 1
                if self.position[i] == len(self.ids):
                    self.done_step[i] = offsets[i]
        return tokens


class PromptRun:
    """A prompt applied to one model's batch: the frames to feed, the forcing hooks, what the transcript hides."""

    def __init__(self, prompt: SttPrompt, tokenizer: Any, time_offset: Fraction, batch_size: int,
                 end_of_padding_id: int, pad_id: int) -> None:
        self.lead = prompt.lead_frames()
        self.pad_id = pad_id
        ids = [] if prompt.text is None else prompt_token_ids(tokenizer, prompt.text, max(end_of_padding_id, pad_id))
        self.forcing = PromptForcing(ids, batch_size, (end_of_padding_id, pad_id))
        self.time_offset = time_offset + Fraction(len(self.lead)) / FRAME_RATE  # the input's time 0 ...
        self.first_step = math.ceil(self.time_offset * FRAME_RATE)  # ... is this step's, or before it
        self.boundary_ids = frozenset((end_of_padding_id, pad_id))

    def start(self, slot: int) -> None:
        self.forcing.start(slot)

    def visible(self, slot: int, step: int, token: int) -> int:
        """The token the transcript sees: PAD in place of the prompt's text."""
        hidden = step < self.first_step or self.forcing.spelling(slot, step)
        return self.pad_id if hidden and token not in self.boundary_ids else token
