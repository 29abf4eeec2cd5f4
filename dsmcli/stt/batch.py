"""The STT step over independent batch slots: the one place that runs ``dsm transcribe``, the server's streams,
the generator API and ``dsm bench``'s STT path (driven by :class:`~dsmcli.engine.scheduler.SlotScheduler`).

Per step and ready slot: encode the slot's next frame (silence prefix, audio, silence suffix) with Mimi at
batch 1, give the LM the codes of the *previous* frame (training alignment), turn the sampled text token into
final words (``WordAssembler``) and end-of-turn events (semantic VAD heads), and hand them to the slot's stream
as they happen. A slot with no frame ready pauses (its state untouched). An optional prompt
(``dsmcli.stt.prompt``, experimental) adds audio before each input and forces text at its start.

On CPU with two or more torch threads, Mimi encodes the step's new frames on a second thread
(:class:`~dsmcli.engine.side_thread.SideThread`) while the LM steps on the previous frames' codes: the two do not
read each other's outputs, and each takes the float paths it takes alone (same codes, same tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dsmcli.engine import EngineOptions, LMStream, SamplingOptions
from dsmcli.engine.scheduler import SlotStream, StepReport
from dsmcli.engine.side_thread import SideThread
from dsmcli.errors import DsmError, OptionError, UsageError
from dsmcli.results import TranscriptEvent
from dsmcli.stt.events import InputEvents, Marker, StepValues, VadStep
from dsmcli.stt.feeds import AudioFeed
from dsmcli.stt.model import SttModel
from dsmcli.stt.options import TranscribeOptions
from dsmcli.stt.prompt import PromptRun, SttPrompt
from dsmcli.stt.words import WordAssembler


class SttStream(SlotStream):
    """A stream on an STT slot. Subclasses say where its frames come from (:meth:`open_feed`); ``want_steps``:
    also emit a :class:`VadStep` per step (models with VAD heads)."""

    want_steps = False

    def open_feed(self, prefix: int, suffix: int, lead: np.ndarray | None) -> AudioFeed:
        """The stream's frames (called when it gets a slot). DsmError when its input cannot be opened."""
        raise NotImplementedError

    def stepped(self, step: int, token: int, audio_samples: int) -> None:
        """Called at each of its steps with the raw text token, before the step's events (progress, tests)."""


@dataclass
class _Slot:
    stream: SttStream
    feed: AudioFeed
    events: InputEvents
    mimi: Any  # MimiState of batch 1 (see SttBatch._encode)
    step: int = 0


class SttBatch:
    """``batch_size`` STT slots of one model (a :class:`~dsmcli.engine.scheduler.SlotBatch`)."""

    def __init__(self, model: SttModel, options: TranscribeOptions = TranscribeOptions(), batch_size: int = 1,
                 prompt: SttPrompt | None = None) -> None:
        if options.vad and not model.has_end_of_turn:
            raise OptionError("vad", f": {model.name} has no end-of-turn (VAD) heads; use stt-1b-en_fr-candle")
        if batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {batch_size}")
        self.model, self.options, self.batch_size = model, options, batch_size
        device = model.lm.device
        generator = None if options.seed is None else torch.Generator(device=device).manual_seed(options.seed)
        sampling = SamplingOptions(temp=0.0, top_k=0, text_temp=options.temperature, text_top_k=options.top_k)
        self.prompt = None if prompt is None else PromptRun(
            prompt, model.tokenizer, model.timing.time_offset, batch_size,
            end_of_padding_id=model.config.end_of_padding_id, pad_id=model.config.text_pad_id)
        hooks = None if self.prompt is None else self.prompt.forcing.hooks
        self.stream = LMStream(model.lm, sampling, hooks=hooks, generator=generator,
                               engine=EngineOptions(kernels=model.kernels))
        self.lm_state = self.stream.init_state(batch_size)
        self.prev_codes = torch.zeros(batch_size, model.config.n_q, 1, dtype=torch.long, device=device)
        self.slots: list[_Slot | None] = [None] * batch_size
        self.encoder = SideThread("dsm-mimi-encode")  # see the module docstring; used when overlap_encode()

    # ------------------------------------------------------------------------------- slots
    def open(self, index: int, stream: SttStream) -> bool:
        """Open ``stream``'s input for slot ``index``; False (the stream failed) when it cannot."""
        timing = self.model.timing
        lead = None if self.prompt is None else self.prompt.lead
        try:
            feed = stream.open_feed(timing.prefix_frames, timing.suffix_frames, lead)
        except DsmError as error:
            stream.fail(error)
            return False
        self.slots[index] = _Slot(stream, feed, self.input_events(), self.model.mimi.init_state(1))
        return True

    def start(self, fresh: dict[int, Any]) -> list[int]:
        """Reset the LM state and previous codes of the ``fresh`` (opened) slots."""
        mask = torch.zeros(self.batch_size, dtype=torch.bool)
        for index in fresh:
            mask[index] = True
            if self.prompt is not None:
                self.prompt.start(index)
        mask = mask.to(self.model.lm.device)
        self.lm_state.reset(mask)
        self.prev_codes[mask] = 0  # never read: every stream is initial at a slot's first step
        return []

    def stop(self, index: int) -> None:
        self.slots[index] = None

    def wait(self, timeout: float) -> bool:
        return False  # pulled input blocks inside the step; pushed input wakes the scheduler

    def input_events(self) -> InputEvents:
        """Word timing and end-of-turn detection for one new stream."""
        cfg, offset = self.model.config, self.model.timing.time_offset
        if self.prompt is not None:
            offset = self.prompt.time_offset
        words = WordAssembler(self.model.tokenizer, end_of_padding_id=cfg.end_of_padding_id, pad_id=cfg.text_pad_id,
                              eos_id=self.model.eos_id, time_offset_seconds=offset)
        return InputEvents(words, offset, self.options.vad_threshold if self.options.vad else None)

    # -------------------------------------------------------------------------------- step
    def step(self) -> StepReport:
        """One batched step of every ready slot; the others pause."""
        ready = np.array([slot is not None and slot.feed.ready() for slot in self.slots])
        if not ready.any():
            return StepReport(False)
        active = torch.from_numpy(ready).to(self.model.lm.device)
        if self.overlap_encode():
            encoding = self.encoder.submit(self._encode, ready)
            out = self.stream.step(self.prev_codes, self.lm_state, active=active)
            codes, encoded, finished = encoding.result()
        else:
            codes, encoded, finished = self._encode(ready)
            out = self.stream.step(self.prev_codes, self.lm_state, active=active)
        self.prev_codes = torch.where(active[:, None, None], codes, self.prev_codes)  # frame t-1 at step t
        heads = any(slot is not None and slot.stream.want_steps for slot in self.slots)
        values = StepValues.read(out, self.options.vad, heads)
        for index in np.flatnonzero(ready):
            if self.slots[index] is not None and not self._emit(int(index), values, bool(encoded[index])):
                self.slots[index] = None
                finished.append(int(index))
        return StepReport(True, finished)

    def overlap_encode(self) -> bool:
        """Whether this step's Mimi encode runs beside the LM step (CPU, two or more torch threads)."""
        return self.model.lm.device.type == "cpu" and torch.get_num_threads() >= 2

    def _encode(self, ready: np.ndarray) -> tuple[torch.Tensor, np.ndarray, list[int]]:
        """Encode each ready slot's next frame into ``codes[i]`` (kept for the LM's next step, as trained);
        ``encoded[i]``: slot ``i`` had a frame; and the slots whose input failed (freed; they still step now).
        Mimi runs per slot (batch 1): residual quantization turns the ULP-level differences of
        batch-size-dependent kernels into different codes at near-ties, and a transcript must not depend on
        what it is batched with."""
        codes = torch.zeros_like(self.prev_codes)
        encoded = np.zeros(self.batch_size, dtype=bool)
        failed = []
        for index in np.flatnonzero(ready):
            slot = self.slots[index]
            assert slot is not None
            try:
                frame = slot.feed.next_frame()
            except DsmError as error:
                slot.stream.fail(error)
                self.slots[index] = None
                failed.append(int(index))
                continue
            if frame is not None:
                wav = torch.from_numpy(frame).to(codes.device)[None, None]  # [1, 1, FRAME_SIZE]
                codes[index] = self.model.mimi.encode_step(wav, slot.mimi)[0]  # [n_q, 1]
                encoded[index] = True
        return codes, encoded, failed

    def _emit(self, index: int, values: StepValues, encoded: bool) -> bool:
        """Hand slot ``index``'s events of this step to its stream; False when the slot is free again (its input
        is done, or its output failed)."""
        slot = self.slots[index]
        assert slot is not None
        token = values.tokens[index]
        slot.stream.stepped(slot.step, token, slot.feed.audio_samples)
        if self.prompt is not None:
            token = self.prompt.visible(index, slot.step, token)
        events = self._step_events(slot, index, values, token, encoded)
        try:
            for event in events:
                slot.stream.emit(event)
            if not encoded:
                slot.stream.finish(slot.feed.audio_samples / self.model.mimi.sample_rate)
        except DsmError as error:  # its output cannot be written: drop this input, keep the others
            slot.stream.fail(error)
            return False
        return encoded

    def _step_events(self, slot: _Slot, index: int, values: StepValues, token: int, encoded: bool) -> list[object]:
        """The slot's events of this step, in order: a VAD step, final words and ends of turn, due markers."""
        events: list[object] = []
        if values.pause_probs is not None and slot.stream.want_steps:
            events.append(VadStep(slot.step, tuple(values.pause_probs[index]), slot.feed.buffered))
        end_of_turn = None if values.end_of_turn is None else values.end_of_turn[index]
        logprob = None if values.logprobs is None else values.logprobs[index]
        words: list[TranscriptEvent] = slot.events.push(slot.step, token, values.probabilities[index], end_of_turn,
                                                        logprob)
        if not encoded:  # the LM just consumed the stream's last frame
            words += slot.events.finish(slot.step)
        events += words
        slot.step += 1
        events += [Marker(marker) for marker in slot.feed.due_markers(slot.step, over=not encoded)]
        return events
