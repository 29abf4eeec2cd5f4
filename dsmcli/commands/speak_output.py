"""Where one input's speech goes: an audio file / stdout / the speakers, and word-timestamp files (srt, json, ...).

:func:`plan_outputs` decides every path up front (before the model loads), refusing to overwrite without
``--force``; :class:`OutputSink` opens them lazily (nothing is created for an input that fails before producing
audio) and writes incrementally: the WAV header stays valid as it grows, subtitles are appended as words become
final, and everything is finalized on Ctrl-C.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dsmcli.audio.sinks import (
    RAW_EXTENSIONS,
    SOUNDFILE_FORMATS,
    STDOUT,
    AudioSink,
    open_sink,
    player_command,
)
from dsmcli.constants import SAMPLE_RATE
from dsmcli.outputs import atomic
from dsmcli.corpus.record import NULL_RECORDER
from dsmcli.errors import DsmError, OutputError, UsageError
from dsmcli.outputs import (
    TranscriptOutput,
    WriterOptions,
    format_for_path,
    is_directory_target,
    open_writers,
    resolve_formats,
)
from dsmcli.results import Word
from dsmcli.outputs.segments import SegmentOptions
from dsmcli.tts.synthesizer import SpeechResult, SpeechSink

WAV_EXT = ".wav"
TIME_EPSILON = 1e-6  # word times are exact multiples of 80 ms; audio time is samples / 24000
AUDIO_EXTENSIONS = (WAV_EXT, *RAW_EXTENSIONS, *SOUNDFILE_FORMATS)


@dataclass(frozen=True)
class OutputPlan:
    """One input's outputs. ``audio``: a file, ``-`` (stdout) or None (speakers only); ``subtitles``: format → file."""

    name: str
    stem: str
    audio: str | None
    raw: bool
    play: bool
    subtitles: tuple[tuple[str, Path], ...] = ()


def _audio_targets(stems: list[str], output: str | None, raw: bool, play: bool
                   ) -> tuple[list[str | None], Path, Path | None]:
    """Audio target per input, the folder for word files with no audio file to sit beside, and the output directory
    to create (None: nothing to create)."""
    count = len(stems)
    if output == STDOUT or (output is None and play):
        if count > 1:
            raise UsageError("several inputs cannot share stdout or the speakers: give an output directory")
        return [output], Path("."), None
    target = Path(output) if output is not None else Path(".")
    if output is None or is_directory_target(output):
        ext = RAW_EXTENSIONS[0] if raw else WAV_EXT
        return [str(target / f"{stem}{ext}") for stem in stems], target, target
    if count > 1:
        raise UsageError(f"{output} is a file name; several inputs need an output directory")
    suffix = target.suffix.lower()
    if not raw and suffix and suffix not in AUDIO_EXTENSIONS:
        if format_for_path(target.name) is not None:
            raise UsageError(f"-o {output} names the speech audio, not its words: give -o {target.stem}.wav and "
                             f"--{suffix[1:]} or -f {suffix[1:]} (written beside it as {target.name})")
        raise UsageError(f"{output}: unknown audio extension (use {', '.join(AUDIO_EXTENSIONS)}, "
                         f"or none for WAV)")
    return [output], target.parent, None


def _check_paths(paths: list[Path], force: bool, create: Path | None) -> None:
    """Refuse duplicates and existing files (without ``force``); only ``create`` (an output directory) may be made,
    other parent directories must exist and be writable."""
    seen: set[Path] = set()
    for path in paths:
        key = path.resolve()
        if key in seen:
            raise UsageError(f"two outputs would be written to {path}: give the inputs different names")
        seen.add(key)
        if path.is_dir():
            raise OutputError(f"{path} is a directory")
        if path.exists() and not force:
            raise OutputError(f"{path} exists (use --force to overwrite)")
    if create is not None:
        try:
            create.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(f"cannot create directory {create}: {error.strerror or error}") from None
    for parent in dict.fromkeys(path.parent for path in paths):
        if not parent.is_dir():
            raise OutputError(f"cannot write {paths[0] if len(paths) == 1 else parent}: no such directory {parent}")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write to directory {parent}: permission denied")


def plan_outputs(inputs: list[tuple[str, str]], output: str | None, *, raw: bool, play: bool,
                 formats: list[str], force: bool) -> list[OutputPlan]:
    """``inputs``: (name, stem) pairs. Output rules: ``-`` = stdout (one input); ``None`` = ``<stem>.wav`` in the
    current directory (or only the speakers with ``play``); a directory (existing, or spelt with a trailing ``/``)
    = ``<dir>/<stem>.wav``; otherwise an audio file (one input) whose extension picks the format (none: WAV).
    Word files go beside the audio file (``out.srt`` for ``out.wav``), else into the current directory."""
    names = resolve_formats(formats) if formats else []
    targets, folder, create = _audio_targets([stem for _, stem in inputs], output, raw, play)
    plans = []
    for (name, stem), audio in zip(inputs, targets):
        beside = audio is not None and audio != STDOUT
        subtitles = tuple((fmt, Path(audio).with_suffix(f".{fmt}") if beside else folder / f"{stem}.{fmt}")
                          for fmt in names)
        plans.append(OutputPlan(name, stem, audio, raw, play, subtitles))
    files = [Path(p.audio) for p in plans if p.audio not in (None, STDOUT)]
    _check_paths(files + [path for p in plans for _, path in p.subtitles], force, create)
    return plans


class OutputSink(SpeechSink):
    """Writes one input's speech as planned. ``errors`` collects failures (the caller decides the exit code)."""

    def __init__(self, plan: OutputPlan, *, force: bool, writer_options: WriterOptions, errors: list[DsmError],
                 audio_device: Any = None, speaker_factory: Any = None, recorder: Any = None,
                 atomic: bool = False) -> None:
        self.plan, self.force, self.writer_options, self.errors = plan, force, writer_options, errors
        # corpus runs (dsmcli.corpus): manifest rows; files written atomically, dropped on failure or Ctrl-C
        self.record, self.atomic = recorder or NULL_RECORDER, atomic
        self.audio_device, self.speaker_factory = audio_device, speaker_factory
        self.result: SpeechResult | None = None
        self._audio: list[Any] | None = None  # AudioSink / SpeakerSink, opened on first use
        self._words: TranscriptOutput | None = None
        self._closed = False
        self._samples = 0  # audio samples written so far
        self._held: list[Word] = []  # words whose end the written audio has not reached yet
        self._words_written = 0

    # ----------------------------------------------------------------------------------- opening
    def _open_audio(self) -> list[Any]:
        if self._audio is None:
            self._audio = []
            if self.plan.audio is not None:
                self._audio.append(open_sink(self.plan.audio, SAMPLE_RATE, raw=self.plan.raw, force=self.force,
                                             atomic=self.atomic))
                if self.plan.audio == STDOUT and self.plan.raw:
                    print(f"dsm: raw s16le {SAMPLE_RATE} Hz mono on stdout; play it with: "
                          f"{player_command(SAMPLE_RATE)}", file=sys.stderr, flush=True)
            if self.plan.play:
                from dsmcli.audio.live import SpeakerSink

                speaker = SpeakerSink(device=self.audio_device, stream_factory=self.speaker_factory)
                self._audio.append(speaker.__enter__())
        return self._audio

    def _open_words(self) -> TranscriptOutput | None:
        if self._words is None and self.plan.subtitles:
            writers = []
            try:
                for fmt, path in self.plan.subtitles:
                    writers += open_writers([fmt], path, self.plan.stem, force=self.force,
                                            options=self.writer_options,
                                            opener=atomic.open_text if self.atomic else None)
            except BaseException:
                for writer in writers:
                    writer.close(interrupted=True)
                raise
            self._words = TranscriptOutput(writers, SegmentOptions())
        return self._words

    # ------------------------------------------------------------------------------------ events
    @property
    def seconds_written(self) -> float:
        return self._samples / SAMPLE_RATE

    def audio(self, pcm: np.ndarray) -> None:
        for sink in self._open_audio():
            sink.write(pcm)
        self._samples += len(pcm)
        self._release(self.seconds_written)

    def word(self, word: Word) -> None:
        """Words are held until the audio written covers them, so that a Ctrl-C leaves cues within the audio."""
        self._held.append(word)
        self._release(self.seconds_written)

    def _release(self, limit: float, clip: bool = False) -> None:
        """Write the held words that end by ``limit`` s; with ``clip``, also the one running past it (ending at
        ``limit``), and drop those starting after it."""
        while self._held and (self._held[0].end <= limit + TIME_EPSILON or clip):
            word = self._held.pop(0)
            if word.start >= limit - TIME_EPSILON and clip:
                self._held.clear()
                break
            words = self._open_words()
            if words is not None:
                words.push(replace(word, end=min(word.end, limit)) if clip else word)
                self._words_written += 1

    def finish(self, result: SpeechResult) -> None:
        self.result = result
        self._open_audio()
        self._release(self.seconds_written, clip=True)
        self._open_words()
        if result.truncated:
            print(f"dsm: warning: {self.plan.name}: stopped after {result.steps} steps before the end of the text",
                  file=sys.stderr, flush=True)
        self._close(result.seconds, interrupted=False)
        self.record.finished(self.plan.name, result.seconds, self.files())

    def fail(self, error: DsmError) -> None:
        self.errors.append(error)
        print(f"dsm: error: {error}", file=sys.stderr, flush=True)
        self.record.failed(self.plan.name, error)
        self._discard_if_atomic()
        self._close(None, interrupted=True)

    def abort(self) -> None:
        self._discard_if_atomic()
        self._close(None, interrupted=True)

    def files(self) -> list[str]:
        """The files this input writes (not stdout or the speakers)."""
        audio = [self.plan.audio] if self.plan.audio not in (None, STDOUT) else []
        return [str(path) for path in audio] + [str(path) for _, path in self.plan.subtitles]

    def _discard_if_atomic(self) -> None:
        """In a corpus run, an input that failed or was interrupted leaves no output (``--resume`` reruns it)."""
        if not self.atomic or self._closed:
            return
        for sink in self._audio or []:
            if hasattr(sink, "discard"):
                sink.discard()
        for writer in self._words.writers if self._words is not None else []:
            atomic.discard(writer.stream)

    def _close(self, seconds: float | None, interrupted: bool) -> None:
        """Finalize every opened output (each even if another fails), then re-raise the first failure."""
        if self._closed:
            return
        self._closed = True
        if interrupted or seconds is None:  # the words end with the audio actually written
            try:
                self._release(self.seconds_written, clip=True)
            except BaseException:  # the word file failed: closed below, reported by the caller
                pass
            seconds = self.seconds_written
        error: BaseException | None = None
        for sink in self._audio or []:
            try:
                if isinstance(sink, AudioSink):
                    sink.close()
                else:
                    sink.close(drain=not interrupted)
            except BaseException as caught:
                error = error or caught
        if self._words is not None:
            try:
                self._words.close(seconds, interrupted=interrupted)
            except BaseException as caught:
                error = error or caught
        if error is not None and not interrupted:
            raise error
        if error is None:
            self._report_written(interrupted)

    def _report_written(self, interrupted: bool) -> None:
        """One line per file written: ``dsm: wrote out.wav (3.2 s)``."""
        note = ", interrupted" if interrupted else ""
        opened = any(isinstance(sink, AudioSink) for sink in self._audio or [])
        if self.plan.audio not in (None, STDOUT) and opened:
            print(f"dsm: wrote {self.plan.audio} ({self.seconds_written:.1f} s{note})", file=sys.stderr, flush=True)
        if self._words is not None:
            for _, path in self.plan.subtitles:
                print(f"dsm: wrote {path} ({self._words_written} words{note})", file=sys.stderr, flush=True)
