"""The TTS text-stream state machine (FORMAT.md §6.3): sampled text token → the token actually fed back.

The model does not get padded text: it *asks* for the next word by sampling NEW_WORD (or PAD to wait). The
machine pops the next :class:`~dsmcli.tts.script.Entry` when the model asks (or when it has waited
``max_padding`` steps), feeds the word's tokens one per step, enforces the entry's forced padding and the pauses,
and, for models with a lookahead stream, multiplexes the tokens of the word ``second_stream_ahead`` words ahead.

How the engine drives it, per step, for a batch of B slots (``batch = TextStreamBatch.create(machine, B)``)::

    batch.reset(b, entries, text_closed=True, prefix_steps=0)   # a new request in slot b (any time)
    ...
    done = batch.finished(delay_steps + final_padding)         # [B] before stepping: release finished slots
    step_mask = batch.ready() & ~done                          # a slot that is not ready must not step
    tok = sample(text_logits)                                  # [B] sampled text ids (PAD bonus already added)
    out = batch.process(tok, step_mask)                        # [B] the value to use instead of `tok`:
                                                               # write it to the text cache and feed it to
                                                               # the depformer as its k = 0 input

``process`` must be called exactly once per LM step of a slot, text-prefix steps included: consumption times,
``end_step`` and the transcript steps count those calls (slot step 0 = the slot's first LM step). A slot with
``prefix_steps = T - 2`` (audio-prefix voices, §6.8) emits ``zero`` (-1) for its first ``T - 2`` steps without
running the machine, as the reference does.

Streaming text: reset the slot with ``text_closed=False``, then ``append_entries`` as words arrive and
``close_text`` at the end. ``ready`` is False while the next step could need an entry (or the lookahead word
after it) that has not arrived, so the generated tokens are identical to giving the whole text at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from dsmcli.tts.options import DEFAULT_INITIAL_PADDING, DEFAULT_MAX_PADDING
from dsmcli.tts.script import Entry
from dsmcli.tts.tokens import TtsTokenIds



@dataclass(frozen=True)
class TextStreamConfig:
    """Parameters of the machine. ``second_stream_ahead``: lookahead in words (0 = single text stream)."""

    token_ids: TtsTokenIds
    second_stream_ahead: int = 0
    max_padding: int = DEFAULT_MAX_PADDING
    initial_padding: int = DEFAULT_INITIAL_PADDING

    def __post_init__(self) -> None:
        if min(self.second_stream_ahead, self.max_padding, self.initial_padding) < 0:
            raise ValueError(f"negative text-stream parameter in {self}")


@dataclass(frozen=True)
class TimedWord:
    """A word of the transcript and the slot step at which it was consumed (``step / 12.5`` s into the audio)."""

    text: str
    step: int


@dataclass
class SlotState:
    """State of one batch slot.

    ``remaining_padding``: PAD decisions left before a word is forced; ``forced_padding``: PAD steps still
    forced; ``queued`` / ``lookahead``: tokens still to feed on the main / second stream; ``step``: number of
    ``process`` calls so far; ``prefix_steps``: text-prefix steps still to emit as ``zero``; ``end_step``: the step
    at which the model asked for a word past the last entry (None while speaking).
    """

    entries: deque[Entry]
    remaining_padding: int
    forced_padding: int
    text_closed: bool = True
    prefix_steps: int = 0
    step: int = 0
    queued: deque[int] = field(default_factory=deque)
    lookahead: deque[int] = field(default_factory=deque)
    end_step: int | None = None
    consumption_times: list[int] = field(default_factory=list)
    transcript: list[TimedWord] = field(default_factory=list)


class TextStreamMachine:
    """Stateless rules; all state is in the :class:`SlotState` passed in."""

    def __init__(self, config: TextStreamConfig) -> None:
        self.config = config
        self.ids = config.token_ids

    def new_slot(self, entries: Iterable[Entry] = (), *, text_closed: bool = True,
                 prefix_steps: int = 0) -> SlotState:
        pad = self.config.initial_padding
        return SlotState(entries=deque(entries), remaining_padding=pad, forced_padding=pad,
                         text_closed=text_closed, prefix_steps=prefix_steps)

    def process(self, slot: SlotState, token: int) -> int:
        """One step: the sampled text ``token`` → the (multiplexed) value to feed back."""
        if slot.prefix_steps > 0:
            slot.prefix_steps -= 1
            slot.step += 1
            return self.ids.zero
        ask_word = self._wants_word(slot, token)
        if ask_word:
            ask_word = self._consume(slot)
        main = self._main_token(slot, ask_word)
        if self.config.second_stream_ahead:
            main = self._multiplex(slot, main)
        slot.step += 1
        return main

    def can_step(self, slot: SlotState) -> bool:
        """False when the next step might pop an entry, or read a lookahead word, not known yet."""
        if slot.text_closed or slot.prefix_steps > 0 or slot.queued or slot.forced_padding > 0:
            return True
        if not slot.entries:
            return False
        if slot.entries[0].is_break:
            return True
        words_after = sum(1 for entry in list(slot.entries)[1:] if not entry.is_break)
        return words_after >= self.config.second_stream_ahead

    def is_finished(self, slot: SlotState, tail_steps: int) -> bool:
        """True once ``tail_steps`` steps have run past ``end_step`` (reference: delay_steps + final_padding)."""
        return slot.end_step is not None and slot.step >= slot.end_step + tail_steps

    def _wants_word(self, slot: SlotState, token: int) -> bool:
        """The step's decision: True = NEW_WORD, False = PAD (overrides first, then the model's choice)."""
        if slot.queued or slot.forced_padding > 0:
            return False
        if slot.remaining_padding <= 0:
            return True
        return token == self.ids.new_word

    def _consume(self, slot: SlotState) -> bool:
        """Pop the next entry for a NEW_WORD decision; returns whether the step stays a NEW_WORD."""
        if not slot.entries:
            first_end = slot.end_step is None
            if first_end:
                slot.end_step = slot.step
            # A lookahead model hears NEW_WORD once more, on the second stream: the end-of-text signal.
            return first_end and self.config.second_stream_ahead > 0
        entry = slot.entries.popleft()
        slot.consumption_times.append(slot.step)
        slot.forced_padding = entry.padding
        if entry.is_break:
            return False
        slot.transcript.append(TimedWord(entry.text, slot.step))
        slot.queued.extend(entry.tokens)
        if self.config.second_stream_ahead:
            slot.lookahead.extend(self._tokens_ahead(slot.entries))
        slot.remaining_padding = self.config.max_padding
        return True

    def _tokens_ahead(self, entries: Sequence[Entry]) -> tuple[int, ...]:
        """Tokens of the ``second_stream_ahead``-th word among the entries still queued (empty if none)."""
        words = (entry for entry in entries if not entry.is_break)
        for rank, entry in enumerate(words, start=1):
            if rank == self.config.second_stream_ahead:
                return entry.tokens
        return ()

    def _main_token(self, slot: SlotState, ask_word: bool) -> int:
        if ask_word:
            return self.ids.new_word
        slot.remaining_padding = max(slot.remaining_padding - 1, 0)
        slot.forced_padding = max(slot.forced_padding - 1, 0)
        return slot.queued.popleft() if slot.queued else self.ids.pad

    def _multiplex(self, slot: SlotState, main: int) -> int:
        """Move NEW_WORD to the second stream (feeding the word's first token at once), else the lookahead."""
        second = self.ids.zero
        # Compared by value, as the reference: a word token equal to new_word (SentencePiece <unk>) counts too.
        if main == self.ids.new_word:
            second = self.ids.new_word
            main = slot.queued.popleft() if slot.queued else self.ids.pad
        elif slot.lookahead:
            second = slot.lookahead.popleft()
        return self.ids.mux(main, second)


@dataclass
class TextStreamBatch:
    """The machine's state for a batch of B slots, each reset independently."""

    machine: TextStreamMachine
    slots: list[SlotState]
    in_use: list[bool]  # False: idle slot (never reset, or released)

    @classmethod
    def create(cls, machine: TextStreamMachine, batch_size: int) -> TextStreamBatch:
        """B idle slots: not ready until :meth:`reset` gives them a request."""
        return cls(machine, [machine.new_slot() for _ in range(batch_size)], [False] * batch_size)

    @property
    def batch_size(self) -> int:
        return len(self.slots)

    def reset(self, index: int, entries: Iterable[Entry] = (), *, text_closed: bool = True,
              prefix_steps: int = 0) -> None:
        """Start a new request in slot ``index`` (step counter back to 0)."""
        self.slots[index] = self.machine.new_slot(entries, text_closed=text_closed, prefix_steps=prefix_steps)
        self.in_use[index] = True

    def release(self, index: int) -> None:
        """Slot ``index`` is idle again (its state is kept for reading until the next reset)."""
        self.in_use[index] = False

    def append_entries(self, index: int, entries: Iterable[Entry]) -> None:
        slot = self.slots[index]
        if slot.text_closed:
            raise ValueError(f"slot {index}: text already closed")
        slot.entries.extend(entries)

    def close_text(self, index: int) -> None:
        """No more entries will come for slot ``index``: it may now reach the end of its text."""
        self.slots[index].text_closed = True

    def ready(self) -> torch.Tensor:
        """``[B]`` bool: slots in use whose next step can run with the text known so far."""
        return torch.tensor([used and self.machine.can_step(slot) for slot, used in zip(self.slots, self.in_use)],
                            dtype=torch.bool)

    def finished(self, tail_steps: int) -> torch.Tensor:
        """``[B]`` bool: slots past ``end_step + tail_steps`` (check before stepping)."""
        return torch.tensor([self.machine.is_finished(slot, tail_steps) for slot in self.slots], dtype=torch.bool)

    def process(self, tokens: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """Sampled text tokens (``B`` values, any shape) → values to feed back, same shape/device/dtype.

        Slots where ``active`` (``[B]`` bool, default: the slots in use) is False are left untouched and get
        ``zero``.
        """
        values = tokens.reshape(-1).tolist()
        if len(values) != self.batch_size:
            raise ValueError(f"expected {self.batch_size} text tokens, got {len(values)}")
        mask = self.in_use if active is None else active.reshape(-1).tolist()
        out = [self.machine.process(slot, int(tok)) if on else self.machine.ids.zero
               for slot, tok, on in zip(self.slots, values, mask)]
        return torch.tensor(out, dtype=tokens.dtype).to(tokens.device).reshape(tokens.shape)
