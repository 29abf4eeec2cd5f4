"""Glue of `dsm transcribe`: inputs → jobs with output sinks, progress, exit code.

Order of a run: check the outputs can be written and open every input file once (a bad file costs one
line on stderr, not a model load), load the model, then stream all inputs through ``Transcriber``.
A failing input (decode error, NaN samples, unwritable output) is reported on one line and the others
go on (exit code 5); Ctrl-C finalizes every open output (exit code 130).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsmcli.outputs import atomic
from dsmcli.corpus.record import NULL_RECORDER
from dsmcli.engine.quantize import QuantMethod

from dsmcli.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    DsmError,
    InputError,
    OutputError,
    UsageError,
)
from dsmcli.outputs import (
    DEFAULT_FORMAT,
    STDOUT,
    TranscriptOutput,
    WriterOptions,
    is_directory_target,
    open_writers,
    output_paths,
    resolve_formats,
)
from dsmcli.results import TranscriptEvent
from dsmcli.outputs.segments import SegmentOptions, SubtitleOptions
from dsmcli.stt.transcriber import SttJob, TranscribeOptions

MIC = "<mic>"
STDIN = "-"
STDIN_STEM = "stdin"  # whisper writes "-.txt" for stdin; we don't
MIC_STEM = "mic"


@dataclass(frozen=True)
class Request:
    """Everything `dsm transcribe` was asked, validated by the command."""

    sources: list[str]
    formats: list[str]
    output: str | None
    force: bool
    model: str
    device: torch.device
    dtype: torch.dtype
    batch_size: int
    raw: bool
    rate: int | None
    channels: int | None
    audio_device: str | None
    options: TranscribeOptions
    writer_options: WriterOptions
    segment_options: SegmentOptions
    progress: bool | None  # None: on when stderr is a terminal (and the transcript is not printed there)
    mic_factory: Any = None  # sounddevice.InputStream stand-in (tests inject a fake)
    quantize: QuantMethod = QuantMethod.NONE  # int8 / int4 LM linears (dsmcli.engine.quantize)
    kernels: str = "auto"  # --kernels: auto, native, torch (dsmcli.kernels.KernelChoice)
    threads: int | None = None  # torch CPU threads
    prompt_text: str | None = None  # --prompt (experimental, dsmcli.stt.prompt)
    prompt_audio: str | None = None  # --prompt-audio: a file, read whole before the model loads
    save_audio: str | None = None  # --mic: also write what the microphone heard to this WAV
    # corpus runs (dsmcli.corpus): manifest rows, and outputs written atomically (dropped on failure or Ctrl-C)
    recorder: Any = None  # dsmcli.corpus.record.Recorder
    atomic: bool = False


def quantize_method(name: str) -> QuantMethod:
    try:
        return QuantMethod(name)
    except ValueError:
        raise UsageError(f"--quantize: unknown method {name!r} (none, int8, int4)") from None


@dataclass
class RunResult:
    total: int
    errors: list[DsmError] = field(default_factory=list)
    interrupted: bool = False  # Ctrl-C ended the run (or a live input); outputs were finalized

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        if not self.errors:
            return EXIT_OK
        if len(self.errors) < self.total:
            return EXIT_PARTIAL
        return self.errors[0].exit_code


def report(message: object, kind: str = "error") -> None:
    """One line on stderr."""
    print(f"dsm: {kind}: {message}", file=sys.stderr, flush=True)


def pick_formats(formats: list[str] | None, *, srt: bool, json_: bool) -> list[str]:
    """The formats asked for; empty: inferred from the output file's extension, else txt (see ``output_paths``)."""
    chosen = list(formats or [])
    chosen += ["srt"] * srt + ["json"] * json_
    if chosen:
        resolve_formats(chosen)  # an unknown name is a usage error before anything else
    return chosen


def pick_sources(inputs: list[str], *, mic: bool) -> list[str]:
    if mic and inputs:
        raise UsageError("--mic takes no input files")
    if mic:
        return [MIC]
    if not inputs:
        raise UsageError("give audio files, - for stdin, or --mic")
    if inputs.count(STDIN) > 1 or (STDIN in inputs and len(inputs) > 1):
        raise UsageError("- (stdin) cannot be combined with other inputs")
    return inputs


def transcribe_options(temperature: float, seed: int | None, vad: bool, vad_threshold: float) -> TranscribeOptions:
    return TranscribeOptions(temperature=temperature, seed=seed, vad=vad, vad_threshold=vad_threshold)


def writer_options(width: int | None, count: int | None, words: int | None, highlight: bool) -> WriterOptions:
    try:
        subtitles = SubtitleOptions(max_line_width=width, max_line_count=count, max_words_per_line=words,
                                    highlight_words=highlight)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return WriterOptions(subtitles=subtitles)


def segment_options(gap: float | None, vad: bool) -> SegmentOptions:
    try:
        return SegmentOptions(gap=gap, split_on_end_of_turn=vad)
    except ValueError as exc:
        raise UsageError(f"--gap: {exc}") from None


def _stem(source: str) -> str:
    if source == STDIN:
        return STDIN_STEM
    if source == MIC:
        return MIC_STEM
    return Path(source).stem


def _output_for(request: Request) -> str | None:
    """No -o: one input in one format goes to stdout; several inputs or formats to ``<stem>.<ext>`` in the
    current directory, as whisper does."""
    if request.output is None and len(request.sources) == 1 and len(resolve_formats(request.formats or
                                                                                     [DEFAULT_FORMAT])) == 1:
        return STDOUT
    return request.output


def show_progress(request: Request) -> bool:
    """``--progress/--no-progress``, else on when stderr is a terminal and the transcript is not printed there."""
    if request.progress is not None:
        return request.progress
    printed_on_terminal = _output_for(request) == STDOUT and sys.stdout.isatty()
    return sys.stderr.isatty() and not printed_on_terminal


class OutputSink:
    """One input's writers, opened when its first result (or its end) arrives."""

    def __init__(self, request: Request, source: str, model_name: str, result: RunResult):
        self.request, self.source, self.result = request, source, result
        self.options = WriterOptions(model=model_name, temperature=request.options.temperature,
                                     subtitles=request.writer_options.subtitles, end_of_turn=request.options.vad)
        self.audio: Any = None  # the AudioSource being read, for its decoder warnings
        self._out: TranscriptOutput | None = None
        self.record = request.recorder or NULL_RECORDER

    def _open(self) -> TranscriptOutput:
        if self._out is None:
            writers = open_writers(self.request.formats, _output_for(self.request), _stem(self.source),
                                   force=self.request.force, options=self.options,
                                   opener=atomic.open_text if self.request.atomic else None)
            self._out = TranscriptOutput(writers, self.request.segment_options)
        return self._out

    def event(self, event: TranscriptEvent) -> None:
        self._open().push(event)
        self.record.event(self.source, event)

    def finish(self, duration: float) -> None:
        out = self._open()
        out.close(duration, interrupted=self.result.interrupted)
        self.record.finished(self.source, duration, [w.name for w in out.writers if w.name != "<stdout>"])
        skipped = 0 if self.audio is None else self.audio.decoder_messages
        if skipped:
            report(f"{self.source}: the decoder skipped damaged data ({skipped} messages)", "warning")

    def fail(self, error: DsmError) -> None:
        self.result.errors.append(error)
        report(error)
        self.record.failed(self.source, error)
        self._discard_if_atomic()
        if self._out is not None:
            try:
                self._out.close(interrupted=True)
            except DsmError:  # the output is what failed: the error was reported already
                pass

    def interrupt(self) -> None:
        if self._out is not None and not self._out.closed:
            self._discard_if_atomic()
            self._out.close(interrupted=True)

    def _discard_if_atomic(self) -> None:
        """In a corpus run, an input that failed or was interrupted leaves no output (``--resume`` reruns it)."""
        if self.request.atomic and self._out is not None and not self._out.closed:
            for writer in self._out.writers:
                atomic.discard(writer.stream)


def check_outputs(request: Request) -> None:
    """Fail before loading the model if an output exists (without --force), collides with another input's,
    or cannot be created."""
    target = _output_for(request)
    if len(request.sources) > 1 and target not in (None, STDOUT) and not is_directory_target(target):
        raise UsageError(f"several inputs need an output directory, not the file name {target} "
                         f"(-o {target.rstrip('/')}/ writes <dir>/<input>.<ext>)")
    owners: dict[Path, str] = {}
    for source in request.sources:
        for path in output_paths(request.formats, target, _stem(source)).values():
            if path is None:
                continue
            if path in owners:
                raise UsageError(f"{owners[path]} and {source} would both write {path}")
            owners[path] = source
            if path.exists() and not request.force:
                raise OutputError(f"{path} exists (use --force to overwrite)")
    for directory in dict.fromkeys(path.parent for path in owners):
        _check_directory(directory)


def _check_directory(directory: Path) -> None:
    """``directory`` exists and is writable, or can be created (its nearest existing ancestor is)."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot create directory {directory}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to directory {existing}: permission denied")


def preflight(request: Request, result: RunResult) -> list[str]:
    """Open (and close) every input file before the model loads; report the bad ones, return the others."""
    from dsmcli.audio import open_audio

    good = []
    for source in request.sources:
        if source in (STDIN, MIC):
            good.append(source)
            continue
        try:
            open_audio(source, raw=request.raw, rate=request.rate, channels=request.channels).close()
        except InputError as error:
            result.errors.append(error)
            report(error)
            (request.recorder or NULL_RECORDER).failed(source, error)
        else:
            good.append(source)
    return good


@contextmanager
def _first_ctrl_c_stops(mic: Any) -> Iterator[None]:
    """The first Ctrl-C stops the microphone: what it heard is still transcribed, then the run exits with 130.
    A second Ctrl-C interrupts at once. (Only the main thread can set signal handlers.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    restore = previous if previous is not None else signal.default_int_handler

    def stop(signum: int, frame: Any) -> None:
        mic.interrupted = True
        mic.stop()
        signal.signal(signal.SIGINT, restore)

    signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, restore)


def check_microphone(request: Request) -> None:
    """Before the model loads: PortAudio is there and the input device takes 24 kHz mono (DeviceError if not);
    the --save-audio file can be written."""
    if MIC not in request.sources:
        if request.save_audio is not None:
            raise UsageError("--save-audio records the microphone: use it with --mic")
        if request.audio_device is not None:
            raise UsageError("--input-device picks the microphone: use it with --mic")
        return
    if request.mic_factory is None:
        from dsmcli.audio.live import check_device, parse_device

        check_device(parse_device(request.audio_device), "input")
    if request.save_audio is not None:
        from dsmcli.audio.sinks import RAW_EXTENSIONS, SOUNDFILE_FORMATS

        saved = Path(request.save_audio)
        if saved.suffix.lower() not in (".wav", *RAW_EXTENSIONS, *SOUNDFILE_FORMATS):
            raise UsageError(f"--save-audio {saved}: use a .wav (or .flac, .ogg, .mp3, .raw) file name")
        if saved.exists() and not request.force:
            raise OutputError(f"{saved} exists (use --force to overwrite)")
        _check_directory(saved.parent)


def _mic_chunks(request: Request, result: RunResult) -> Iterator[np.ndarray]:
    from dsmcli.audio.sinks import open_sink
    from dsmcli.audio.live import MicSource, parse_device

    mic = MicSource(device=parse_device(request.audio_device), stream_factory=request.mic_factory)
    saved = None if request.save_audio is None else open_sink(request.save_audio, force=True)
    with _first_ctrl_c_stops(mic), mic:  # the handler is in place before the stream starts
        try:
            for chunk in mic:
                if saved is not None:
                    saved.write(chunk)  # exactly the samples transcribed, in order
                yield chunk
        finally:
            if saved is not None:
                saved.close()
    result.interrupted = result.interrupted or mic.interrupted


def _opener(request: Request, source: str, sink: OutputSink, result: RunResult) -> Callable[[], Iterable[np.ndarray]]:
    def open_source() -> Iterable[np.ndarray]:
        sink.record.opened(source)
        if source == MIC:
            return _mic_chunks(request, result)
        from dsmcli.audio import open_audio

        sink.audio = open_audio(source, raw=request.raw, rate=request.rate, channels=request.channels)
        return sink.audio

    return open_source


def execute(request: Request, observer: Callable[[str, int], None] | None = None) -> RunResult:
    """Run the whole request; the result's ``exit_code`` is the command's. ``observer(source, samples_read)``
    is called at every step of every input (after the progress bars)."""
    from dsmcli.commands.progress import ProgressDisplay
    from dsmcli.stt import SttModel
    from dsmcli.stt.transcriber import Transcriber

    check_outputs(request)
    prompt = load_prompt(request)
    check_microphone(request)
    result = RunResult(total=len(request.sources))
    sources = preflight(request, result)
    if not sources:
        return result
    if request.threads:
        torch.set_num_threads(request.threads)
    model = SttModel.load(request.model, device=request.device, dtype=request.dtype, quantize=request.quantize,
                          kernels=request.kernels)
    transcriber = Transcriber(model, request.options, batch_size=min(request.batch_size, len(sources)), prompt=prompt)
    sinks = [OutputSink(request, source, model.name, result) for source in sources]
    jobs = [SttJob(source, _opener(request, source, sink, result), sink) for source, sink in zip(sources, sinks)]
    try:
        with ProgressDisplay(enabled=show_progress(request), sources=sources) as display:
            transcriber.run(jobs, progress=_chain(display.update, observer))
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        for sink in sinks:
            sink.interrupt()
    return result


def load_prompt(request: Request) -> Any:
    """The ``SttPrompt`` of ``--prompt`` / ``--prompt-audio`` (None without them); the same for every input."""
    if request.prompt_text is None and request.prompt_audio is None:
        return None
    from dsmcli.stt.prompt import SttPrompt, load_prompt_audio

    audio = None if request.prompt_audio is None else load_prompt_audio(request.prompt_audio)
    return SttPrompt(text=request.prompt_text, audio=audio)


def _chain(first: Callable[[str, int], None], second: Callable[[str, int], None] | None) -> Callable[[str, int], None]:
    if second is None:
        return first

    def both(source: str, samples: int) -> None:
        first(source, samples)
        second(source, samples)

    return both


def planned_outputs(request: Request, source: str) -> list[Path]:
    """The files ``source`` writes (stdout is not a file): what ``--resume`` checks (dsmcli.corpus.plan)."""
    paths = output_paths(request.formats, _output_for(request), _stem(source)).values()
    return [path for path in paths if path is not None]
