"""Glue of `dsm transcribe`: inputs → jobs with output sinks, progress, exit code."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from dsmcli.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, DsmError, OutputError, UsageError
from dsmcli.outputs import STDOUT, TranscriptOutput, WriterOptions, open_writers, output_paths
from dsmcli.results import TranscriptEvent
from dsmcli.segments import SegmentOptions, SubtitleOptions
from dsmcli.transcribe import SttJob, TranscribeOptions

MIC = "<mic>"
STDIN_STEM = "stdin"  # whisper writes "-.txt" for stdin; we don't
MIC_STEM = "mic"


@dataclass(frozen=True)
class Request:
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
    progress: bool
    mic_factory: Any = None  # sounddevice.InputStream stand-in (tests inject a fake)


@dataclass
class RunResult:
    total: int
    errors: list[DsmError] = field(default_factory=list)
    interrupted: bool = False  # Ctrl-C ended a live input; its outputs were finalized

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        if not self.errors:
            return EXIT_OK
        if len(self.errors) < self.total:
            return EXIT_PARTIAL
        return self.errors[0].exit_code


def pick_formats(formats: list[str] | None, *, srt: bool, json_: bool) -> list[str]:
    chosen = list(formats or [])
    chosen += ["srt"] * srt + ["json"] * json_
    return chosen or ["txt"]


def pick_sources(inputs: list[str], *, mic: bool) -> list[str]:
    if mic and inputs:
        raise UsageError("--mic takes no input files")
    if mic:
        return [MIC]
    if not inputs:
        raise UsageError("give audio files, - for stdin, or --mic")
    if inputs.count("-") > 1 or ("-" in inputs and len(inputs) > 1):
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
    if source == "-":
        return STDIN_STEM
    if source == MIC:
        return MIC_STEM
    return Path(source).stem


def _output_for(request: Request) -> str | None:
    """One input and no -o: results go to stdout (one format). Several inputs: the current directory."""
    if request.output is None and len(request.sources) == 1 and len(request.formats) == 1:
        return STDOUT
    return request.output


class OutputSink:
    """One input's writers, opened when its first result (or its end) arrives."""

    def __init__(self, request: Request, source: str, model_name: str, result: RunResult):
        self.request, self.source, self.result = request, source, result
        self.options = WriterOptions(model=model_name, temperature=request.options.temperature,
                                     subtitles=request.writer_options.subtitles)
        self._out: TranscriptOutput | None = None

    def _open(self) -> TranscriptOutput:
        if self._out is None:
            writers = open_writers(self.request.formats, _output_for(self.request), _stem(self.source),
                                   force=self.request.force, options=self.options)
            self._out = TranscriptOutput(writers, self.request.segment_options)
        return self._out

    def event(self, event: TranscriptEvent) -> None:
        self._open().push(event)

    def finish(self, duration: float) -> None:
        self._open().close(duration)

    def fail(self, error: DsmError) -> None:
        self.result.errors.append(error)
        print(f"dsm: error: {error}", file=sys.stderr, flush=True)
        if self._out is not None:
            self._out.close(interrupted=True)

    def interrupt(self) -> None:
        if self._out is not None and not self._out.closed:
            self._out.close(interrupted=True)


def check_outputs(request: Request) -> None:
    """Fail before loading the model if an output exists (without --force) or cannot be named."""
    target = _output_for(request)
    for source in request.sources:
        for path in output_paths(request.formats, target, _stem(source)).values():
            if path is not None and path.exists() and not request.force:
                raise OutputError(f"{path} exists (use --force to overwrite)")
    if len(request.sources) > 1 and target is not None and Path(target).suffix and not Path(target).is_dir():
        raise UsageError("several inputs need an output directory, not a file name")


def _mic_chunks(request: Request, result: RunResult) -> Iterator[np.ndarray]:
    from dsmcli.live import MicSource

    device: int | str | None = request.audio_device
    if isinstance(device, str) and device.isdigit():
        device = int(device)
    with MicSource(device=device, stream_factory=request.mic_factory) as mic:
        yield from mic
    result.interrupted = mic.interrupted


def _opener(request: Request, source: str, result: RunResult):
    def open_source() -> Iterable[np.ndarray]:
        if source == MIC:
            return _mic_chunks(request, result)
        from dsmcli.audio import open_audio

        return open_audio(source, raw=request.raw, rate=request.rate, channels=request.channels)

    return open_source


def execute(request: Request) -> RunResult:
    from dsmcli.commands.progress import ProgressDisplay
    from dsmcli.stt import SttModel
    from dsmcli.transcribe import Transcriber

    check_outputs(request)
    model = SttModel.load(request.model, device=request.device, dtype=request.dtype)
    result = RunResult(total=len(request.sources))
    sinks = [OutputSink(request, source, model.name, result) for source in request.sources]
    jobs = [SttJob(source, _opener(request, source, result), sink) for source, sink in zip(request.sources, sinks)]
    batch = min(request.batch_size, len(jobs))
    try:
        with ProgressDisplay(enabled=request.progress, sources=request.sources) as display:
            Transcriber(model, request.options, batch_size=batch).run(jobs, progress=display.update)
    finally:
        for sink in sinks:
            sink.interrupt()
    return result
