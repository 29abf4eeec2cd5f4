"""What one STT stream produces: words and ends of turn (:class:`InputEvents`), VAD steps, markers, and the
per-step values read back from the model (:class:`StepValues`)."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import torch

from dsmcli.constants import FRAME_RATE
from dsmcli.engine import StepOutput
from dsmcli.results import EndOfTurn, TranscriptEvent
from dsmcli.stt.model import END_OF_TURN_CLASS, END_OF_TURN_HEAD
from dsmcli.stt.words import WordAssembler


@dataclass(frozen=True)
class VadStep:
    """One step of a stream on a model with VAD heads: ``prs[h]`` = P(pause) of head ``h`` (Kyutai's ``Step``);
    ``buffered_pcm``: samples received and not yet consumed."""

    step_idx: int
    prs: tuple[float, ...]
    buffered_pcm: int


@dataclass(frozen=True)
class Marker:
    """Echo of :meth:`~dsmcli.stt.session.SttSession.mark`: every sample pushed before it has gone through the
    model's delay."""

    id: int


class InputEvents:
    """One input's decoded stream → its events in order: words as they become final, ends of turn.

    ``push`` takes a step's text token (and its probability) and, with VAD, the end-of-turn probability.
    An end of turn fires when that probability passes ``vad_threshold`` and text came since the last
    one. ``WordAssembler`` only emits a word at the next word boundary, so an end of turn detected while
    the turn's last word is still open is held back until that word is out (or the stream ends): the
    words before it stay in the turn, and segmenting at the end of turn cuts in the right place. Its
    ``time`` stays the step where the VAD fired.
    """

    def __init__(self, words: WordAssembler, time_offset: Fraction, vad_threshold: float | None) -> None:
        self.words = words
        self.time_offset = time_offset
        self.vad_threshold = vad_threshold
        self.turn_open = False  # text came since the last end of turn
        self.held: EndOfTurn | None = None  # detected, waiting for the turn's last word

    def push(self, step: int, token: int, probability: float | None,
             end_of_turn: float | None = None, logprob: float | None = None) -> list[TranscriptEvent]:
        """Events made final by ``step``: its words, then a (released or new) end of turn."""
        events: list[TranscriptEvent] = list(self.words.push(step, token, probability, logprob))
        if self.held is not None:
            if not self.words.has_pending_text:  # the held turn's words are out: they belong to it
                events.append(self.held)
                self.held = None
        elif events or self.words.has_pending_text:
            self.turn_open = True
        if end_of_turn is not None and self._ends_turn(end_of_turn):
            self.turn_open = False
            turn = EndOfTurn(time=self._time(step), probability=end_of_turn)
            if self.words.has_pending_text:
                self.held = turn
            else:
                events.append(turn)
        return events

    def finish(self, last_step: int) -> list[TranscriptEvent]:
        """The last words (and a held end of turn) at the end of the stream."""
        events: list[TranscriptEvent] = list(self.words.finish(last_step))
        if self.held is not None:
            events.append(self.held)
            self.held = None
        return events

    def _ends_turn(self, probability: float) -> bool:
        if self.vad_threshold is None:
            return False
        return self.turn_open and self.held is None and probability > self.vad_threshold

    def _time(self, step: int) -> float:
        return float(max(Fraction(0), Fraction(step) / FRAME_RATE - self.time_offset))


@dataclass(frozen=True)
class StepValues:
    """One step's outputs on the host (one transfer): per slot token, its probability and log-probability,
    end-of-turn prob, and (when asked) every VAD head's pause probability."""

    tokens: list[int]
    probabilities: list[float]
    end_of_turn: list[float] | None
    logprobs: list[float] | None = None
    pause_probs: list[list[float]] | None = None

    @classmethod
    def read(cls, out: StepOutput, vad: bool, heads: bool = False) -> StepValues:
        """``out.text_tokens [B]``, ``out.text_logits [B, card]``, ``out.extra_probs [B, heads, classes]``;
        ``heads``: also read ``pause_probs[b][h]`` (class 0 of every head)."""
        probabilities = torch.softmax(out.text_logits, dim=-1).gather(1, out.text_tokens[:, None])[:, 0]
        logprobs = torch.log_softmax(out.text_logits.float(), dim=-1).gather(1, out.text_tokens[:, None])[:, 0]
        rows = [out.text_tokens.double(), probabilities.double(), logprobs.double()]
        if vad and out.extra_probs is not None:
            rows.append(out.extra_probs[:, END_OF_TURN_HEAD, END_OF_TURN_CLASS].double())
        values = torch.stack(rows).tolist()
        pauses = out.extra_probs[:, :, 0].tolist() if heads and out.extra_probs is not None else None
        return cls([int(t) for t in values[0]], values[1], values[3] if len(values) > 3 else None, values[2],
                   pauses)
