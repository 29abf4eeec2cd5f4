"""Glue of ``dsm speak`` / ``dsm dialog``: request → output plans, texts, voices → jobs → exit code.

Everything that can be checked cheaply is checked before the model weights load: output paths, the model's
kind, the voices (resolved, fetched), and the texts of files (UTF-8, dialog tags). A failure of one input of
several leaves the others running (exit code 5); a failure shared by all inputs is raised. Once the model has
loaded, the voices of the first inputs are made (a voice's cross-attention source projected) before any text
is read: ``llm | dsm speak - --play`` projects while the LLM is still thinking.
"""

from __future__ import annotations

import sys
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch

from dsmcli.engine import LMStream
from dsmcli.errors import EXIT_OK, EXIT_PARTIAL, DsmError, InputError, UsageError
from dsmcli.hub.checkpoint import load_checkpoint
from dsmcli.outputs import WriterOptions
from dsmcli.tts.synthesizer import SpeakJob, Synthesizer
from dsmcli.tts.model import (
    DEFAULT_VOICE,
    SpeakOptions,
    TtsModel,
    cfg_lut_value,
    checked_voice_setup,
    codebooks_to_generate,
)
from dsmcli.commands.speak_output import OutputSink, plan_outputs
from dsmcli.tts.text_feed import (
    STDIN,
    STDIN_NAME,
    FixedEntries,
    StdinReader,
    StreamingEntries,
    read_text,
)
from dsmcli.tts.slot_voice import SlotVoice, resolve_voices, slot_voice
from dsmcli.tts.dialog import parse_dialog
from dsmcli.tts.voices import (
    ResolvedVoice,
    VoiceInfo,
    VoiceKind,
    VoiceSetup,
    list_voices,
    voice_model_tag,
)

TEXT_STEM = "speech"  # output stem of --text
STDIN_STEM = "stdin"
TEXT_NAME = "--text"


@dataclass(frozen=True)
class SpeakInput:
    """One input: a file, ``-`` (stdin) or literal text (``text``)."""

    source: str | None = None
    text: str | None = None

    @property
    def name(self) -> str:
        return TEXT_NAME if self.source is None else STDIN_NAME if self.source == STDIN else self.source

    @property
    def stem(self) -> str:
        return TEXT_STEM if self.source is None else STDIN_STEM if self.source == STDIN else Path(self.source).stem


@dataclass(frozen=True)
class SpeakRequest:
    """Everything ``dsm speak`` / ``dsm dialog`` was asked. ``voices``: MAIN first (or one per input for speak);
    ``named_voices``: dialog speaker name → voice. ``stdin`` / ``speaker_factory`` are injectable for tests."""

    inputs: tuple[SpeakInput, ...]
    model: str
    options: SpeakOptions = SpeakOptions()
    dialog: bool = False
    voices: tuple[str, ...] = ()
    named_voices: tuple[tuple[str, str], ...] = ()
    voice_repo: str | None = None
    output: str | None = None
    raw: bool = False
    play: bool = False
    force: bool = False
    formats: tuple[str, ...] = ()
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    n_q: int | None = None
    batch_size: int = 8
    quantize: str = "none"  # none, int8, int4: the LM's linear weights (dsmcli.engine.quantize)
    kernels: str = "auto"  # --kernels: auto, native, torch (dsmcli.kernels.KernelChoice)
    audio_device: Any = None
    speaker_factory: Any = None
    stdin: BinaryIO | None = None
    # corpus runs (dsmcli.corpus): manifest rows, and files written atomically (dropped on failure or Ctrl-C)
    recorder: Any = None  # dsmcli.corpus.record.Recorder
    atomic: bool = False


@dataclass
class RunResult:
    total: int
    errors: list[DsmError] = field(default_factory=list)
    sinks: list[OutputSink] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if not self.errors:
            return EXIT_OK
        return EXIT_PARTIAL if len(self.errors) < self.total else self.errors[0].exit_code


def check_inputs(inputs: Sequence[SpeakInput]) -> None:
    if not inputs:
        raise UsageError("give text files, - for stdin, or --text")
    if any(i.source == STDIN for i in inputs) and len(inputs) > 1:
        raise UsageError("- (stdin) cannot be combined with other inputs")


def _voice_names(request: SpeakRequest, setup: VoiceSetup, speakers: Sequence[str], index: int) -> list[str]:
    """The voices of input ``index`` (MAIN first) for its ``speakers`` (dialog) or as a monologue."""
    named = dict(request.named_voices)
    if request.dialog:
        if named:
            missing = [s for s in speakers if s not in named]
            if missing:
                raise UsageError(f"no voice for speaker {', '.join(missing)}: add --voices {missing[0]}=VOICE")
            return [named[s] for s in speakers]
        if len(request.voices) >= len(speakers):
            return list(request.voices[: len(speakers)])
        if not request.voices and len(speakers) == 1 and setup.kind is VoiceKind.EMBEDDING:
            return [DEFAULT_VOICE]
        raise UsageError(f"the dialog has {len(speakers)} speakers ({', '.join(speakers)}): give one --voice each, "
                         f"in order of appearance, or --voices NAME=VOICE")
    if not request.voices:
        return [DEFAULT_VOICE] if setup.kind is VoiceKind.EMBEDDING else []
    if len(request.voices) == 1:
        return [request.voices[0]]
    if len(request.voices) == len(request.inputs):
        return [request.voices[index]]
    raise UsageError(f"give one --voice for all inputs or one per input ({len(request.inputs)}), "
                     f"not {len(request.voices)}")


@dataclass
class _Prepared:
    """An input ready to run: its turns (None = streamed from stdin) and resolved voices."""

    input: SpeakInput
    turns: tuple[str, ...] | None
    voices: list[ResolvedVoice]


def _prepare(request: SpeakRequest, setup: VoiceSetup, index: int, resolved: dict[str, ResolvedVoice]) -> _Prepared:
    """Read (non-streamed) text and resolve the voices of input ``index``. Raises DsmError for this input."""
    item = request.inputs[index]
    turns: tuple[str, ...] | None
    speakers: tuple[str, ...] = ("",)
    if item.text is not None:
        turns = (item.text,)
    elif item.source == STDIN and not request.dialog:
        turns = None  # streamed as it arrives
    else:
        text = read_text(item.source or STDIN, request.stdin)
        if request.dialog:
            script = parse_dialog(text)
            turns, speakers = script.turns, script.speakers
        else:
            turns = (text,)
    if turns is not None and not "".join(turns).strip():
        raise InputError(f"{item.name}: the script is empty")
    names = _voice_names(request, setup, speakers, index)
    for name in names:
        if name not in resolved:
            resolved[name] = resolve_voices(setup, [name])[0]
    return _Prepared(item, turns, [resolved[name] for name in names])


class _Jobs:
    """Builds the jobs of prepared inputs; voice conditions are computed (cross-attention sources projected for
    ``stream``) once per distinct voice list, and kept until the last input that uses it has opened."""

    def __init__(self, request: SpeakRequest, model: TtsModel, stream: LMStream | None = None) -> None:
        self.request, self.model, self.stream = request, model, stream
        self.cfg_value = model.cfg_value(request.options)
        self._voices: dict[tuple[str, ...], SlotVoice] = {}
        self._uses: Counter[tuple[str, ...]] = Counter()

    @staticmethod
    def _key(voices: list[ResolvedVoice]) -> tuple[str, ...]:
        return tuple(str(v.path) for v in voices)

    def plan(self, prepared: Sequence[_Prepared], first: int) -> None:
        """Count the inputs of each voice list, and make the voices of the ``first`` inputs now (right after the
        model loads: a piped text still being written finds its voice ready)."""
        self._uses.update(self._key(p.voices) for p in prepared)
        for item in prepared[:first]:
            try:
                self._make(item.voices)
            except DsmError:
                pass  # the input fails alone when it opens (the error is raised again there)

    def _make(self, voices: list[ResolvedVoice]) -> SlotVoice:
        key = self._key(voices)
        if key not in self._voices:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self._voices[key] = slot_voice(self.model, voices, self.cfg_value, self.stream)
            for warning in caught:
                print(f"dsm: warning: {warning.message}", file=sys.stderr, flush=True)
        return self._voices[key]

    def voice(self, voices: list[ResolvedVoice]) -> SlotVoice:
        """The voice of an input that opens now (its slot keeps it while it runs)."""
        key = self._key(voices)
        voice = self._make(voices)
        self._uses[key] -= 1
        if self._uses[key] <= 0:  # no input still to open uses it: the cache lets go of its projection
            self._voices.pop(key, None)
        return voice

    def job(self, prepared: _Prepared, sink: OutputSink) -> SpeakJob:
        model, options = self.model, self.request.options

        def open_job():
            sink.record.opened(prepared.input.name)
            sink.record.count(prepared.input.name, sum(map(len, prepared.turns or ())))
            voice = self.voice(prepared.voices)
            if prepared.turns is not None:
                return voice, FixedEntries(prepared.input.name, model.entries(prepared.turns, options))
            stream = self.request.stdin if self.request.stdin is not None else sys.stdin.buffer
            return voice, StreamingEntries(STDIN_NAME, StdinReader(stream), model.entry_stream(options))

        return SpeakJob(prepared.input.name, open_job, sink)


def execute(request: SpeakRequest) -> RunResult:
    """Run ``dsm speak`` / ``dsm dialog``; returns the per-input outcome (errors printed as they happen)."""
    check_inputs(request.inputs)
    plans = plan_outputs([(i.name, i.stem) for i in request.inputs], request.output, raw=request.raw,
                         play=request.play, formats=list(request.formats), force=request.force)
    if request.audio_device is not None and not request.play:
        raise UsageError("--output-device picks the speakers: use it with --play")
    if request.play and request.speaker_factory is None:
        from dsmcli.audio.live import check_device

        check_device(request.audio_device, "output")  # PortAudio and the device, before anything loads
    checkpoint = load_checkpoint(request.model)  # read and checked once: the model below loads from it
    setup = checked_voice_setup(checkpoint, request.voice_repo)
    cfg_lut_value(checkpoint.lm_config, request.options.cfg, checkpoint.name)  # fail before loading the weights
    codebooks_to_generate(checkpoint.lm_config, request.n_q, setup)
    if request.dialog and not setup.multi_speaker:
        raise UsageError(f"{checkpoint.name} takes a single voice prefix, not dialog voices: "
                         f"use a model with voice embeddings (tts-1.6b-en_fr)")
    result = RunResult(total=len(request.inputs))
    writer_options = WriterOptions(model=checkpoint.name, temperature=request.options.temperature)
    prepared, resolved = [], {}
    for index, plan in enumerate(plans):
        sink = OutputSink(plan, force=request.force, writer_options=writer_options, errors=result.errors,
                          audio_device=request.audio_device, speaker_factory=request.speaker_factory,
                          recorder=request.recorder, atomic=request.atomic)
        result.sinks.append(sink)
        try:
            prepared.append((_prepare(request, setup, index, resolved), sink))
        except DsmError as error:
            if len(request.inputs) == 1 or isinstance(error, UsageError):
                raise
            sink.fail(error)
    if not prepared:
        return result
    model = TtsModel.from_checkpoint(checkpoint, setup, device=request.device, dtype=request.dtype, n_q=request.n_q,
                                     quantize=request.quantize, kernels=request.kernels)
    synthesizer = Synthesizer(model, request.options, batch_size=min(request.batch_size, len(prepared)))
    jobs = _Jobs(request, model, synthesizer.batch.stream)
    jobs.plan([p for p, _ in prepared], synthesizer.batch_size)  # before any text is read from a pipe
    work = [jobs.job(p, sink) for p, sink in prepared]
    synthesizer.run(work)
    return result


def available_voices(model: str | None, voice_repo: str | None) -> tuple[list[VoiceInfo], str]:
    """Voices usable offline with ``model`` (embeddings of its signature, or audio files for prefix models),
    and the name of the voices source they were looked up in. Reads the disk only, never the Hub: a model
    whose config is not cached gets every voice of its voices source, unfiltered (with a note on stderr)."""
    from dsmcli.hub.files import NotCachedError, local_files_only
    from dsmcli.hub.registry import default_model
    from dsmcli.tts.voices import voices_source_for

    name = model or default_model("tts")
    with local_files_only():
        try:
            checkpoint = load_checkpoint(name)
        except NotCachedError:
            source = voices_source_for(name, voice_repo)
            print(f"dsm: note: {name} is not in the local cache, so its voices are not filtered by model: "
                  f"listing every voice in {source.name}", file=sys.stderr, flush=True)
            return list_voices([source]), source.name
        setup = checked_voice_setup(checkpoint, voice_repo)
    found = list_voices([setup.voices], model_tag=voice_model_tag(setup))
    return [v for v in found if v.kind is setup.kind], setup.voices.name
