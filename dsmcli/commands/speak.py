"""`dsm speak`, `dsm dialog`, `dsm voices`: flags → a SpeakRequest → dsmcli.speak_run. No model logic here."""

from __future__ import annotations

import json
import sys
from typing import List, Optional

import typer

from dsmcli.cli import app
from dsmcli.commands.common import dtype_option, resolve_device, resolve_dtype
from dsmcli.corpus import flags
from dsmcli.corpus.inputs import TEXT_EXTENSIONS
from dsmcli.corpus.plan import CorpusOptions, run_speak
from dsmcli.errors import EXIT_INTERRUPTED, UsageError
from dsmcli.speak_model import DEFAULT_TEMPERATURE, SpeakOptions
from dsmcli.tts.state_machine import DEFAULT_MAX_PADDING

MODEL_HELP = "TTS model: registry name, Hub repo id or local dir. Default: the registry's default TTS model."
VOICE_REPO_HELP = "Voices repository (registry name, Hub repo id or local dir) for --voice paths."
OUTPUT_HELP = ("Audio output: FILE (.wav, .flac, .ogg, .raw), DIR (one <input>.wav each) or - (WAV on stdout, "
               "raw s16le with --raw). Default: <input>.wav in the current directory (none with --play).")


def _model_option():
    return typer.Option(None, "--model", "-m", help=MODEL_HELP)


def _options(temperature: float, cfg: Optional[float], padding_bonus: float, seed: Optional[int],
             max_padding: int) -> SpeakOptions:
    return SpeakOptions(temperature=temperature, cfg=cfg, padding_bonus=padding_bonus, seed=seed,
                        max_padding=max_padding)


def _formats(formats: Optional[List[str]], srt: bool, json_: bool) -> tuple[str, ...]:
    return tuple(formats or []) + ("srt",) * srt + ("json",) * json_


def _named_voices(pairs: Optional[List[str]]) -> tuple[tuple[str, str], ...]:
    named = []
    for pair in pairs or []:
        name, sep, voice = pair.partition("=")
        if not sep or not name.strip() or not voice.strip():
            raise UsageError(f"--voices {pair!r}: write NAME=VOICE, e.g. --voices Alice=expresso/ex01.wav")
        named.append((name.strip(), voice.strip()))
    return tuple(named)


def _run(corpus: CorpusOptions | None = None, **fields) -> None:
    from dsmcli.hub import default_model
    from dsmcli.speak_run import SpeakRequest, execute

    device = fields.pop("device_name")
    fields["dtype"] = resolve_dtype(fields.pop("dtype_name"), device)
    fields["device"] = resolve_device(device)
    fields["model"] = fields["model"] or default_model("tts")
    # sys.exit, not typer.Exit: cli.main runs Typer with standalone_mode=False, which returns (and drops) the code
    # of a typer.Exit, and turns Ctrl-C into such an Exit(130), instead of exiting with it.
    try:
        request = SpeakRequest(**fields)
        result = run_speak(request, corpus) if corpus is not None and corpus.active else execute(request)
    except KeyboardInterrupt:
        print("dsm: interrupted", file=sys.stderr, flush=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(result.exit_code)


@app.command("speak")
def speak_cmd(
    inputs: List[str] = typer.Argument(None, help="UTF-8 text files, or - to speak stdin as the text arrives."),
    text: Optional[str] = typer.Option(None, "--text", "-t", help="Speak this text (instead of files)."),
    model: Optional[str] = _model_option(),
    voice: List[str] = typer.Option(
        None, "--voice", "-v",
        help="Voice: a path in the voices repo, a local .safetensors embedding or .wav with its embedding beside it "
             "(tts-1.6b); any audio file (tts-0.75b). Once for all inputs, or once per input."),
    voice_repo: Optional[str] = typer.Option(None, "--voice-repo", help=VOICE_REPO_HELP),
    output: Optional[str] = typer.Option(None, "--output", "-o", help=OUTPUT_HELP),
    raw: bool = typer.Option(False, "--raw", help="Write headerless s16le PCM (24 kHz mono)."),
    play: bool = typer.Option(False, "--play", help="Play on the speakers while generating."),
    audio_device: Optional[str] = typer.Option(None, "--audio-device", help="Output sound device for --play."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    srt: bool = typer.Option(False, "--srt", help="Also write word timestamps as SRT subtitles."),
    json_: bool = typer.Option(False, "--json", help="Also write word timestamps as JSON."),
    formats: Optional[List[str]] = typer.Option(None, "--format", "-f", help="Word-timestamp formats: srt, vtt, "
                                                "tsv, txt, json, jsonl (repeatable)."),
    temperature: float = typer.Option(DEFAULT_TEMPERATURE, "--temperature", help="Sampling temperature (0 = greedy)."),
    cfg: Optional[float] = typer.Option(None, "--cfg", help="Guidance: a LUT value 1.0..4.0 for distilled models, "
                                        "the real coefficient otherwise (1 = off). Default 2.0."),
    padding_bonus: float = typer.Option(0.0, "--padding-bonus", help="Added to the PAD logit: > 0 speaks slower."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (same seed, same audio)."),
    n_q: Optional[int] = typer.Option(None, "--n-q", help="Audio codebooks to generate (default: all)."),
    max_padding: int = typer.Option(DEFAULT_MAX_PADDING, "--max-padding", help="Steps before a word is forced."),
    device: str = typer.Option("auto", "--device", help="Torch device: auto, cpu, cuda, cuda:1, mps."),
    dtype: str = dtype_option(),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1, help="Inputs generated in parallel."),
    # corpus runs (dsmcli.corpus): many text files, recorded, resumable, sharded
    recursive: bool = flags.recursive_option(),
    glob: Optional[str] = flags.glob_option(),
    inputs_list: Optional[str] = flags.inputs_option(),
    manifest: Optional[str] = flags.manifest_option(),
    resume: bool = flags.resume_option(),
    shard: Optional[str] = flags.shard_option(),
) -> None:
    """Text → speech, streaming. Several files run as parallel batch slots; - speaks stdin as it arrives."""
    from dsmcli.speak_run import SpeakInput

    if text is not None and inputs:
        raise UsageError("give either text files or --text, not both")
    corpus = flags.corpus_options(manifest, resume, shard)
    inputs = flags.selected_inputs(inputs, recursive, glob, inputs_list, TEXT_EXTENSIONS)
    items = (SpeakInput(text=text),) if text is not None else tuple(SpeakInput(source=s) for s in inputs or [])
    _run(inputs=items, model=model, voices=tuple(voice or []), voice_repo=voice_repo, output=output, raw=raw,
         play=play, audio_device=_device(audio_device), force=force, formats=_formats(formats, srt, json_),
         options=_options(temperature, cfg, padding_bonus, seed, max_padding), n_q=n_q, device_name=device,
         dtype_name=dtype, batch_size=batch_size, corpus=corpus)


@app.command("dialog")
def dialog_cmd(
    scripts: List[str] = typer.Argument(None, help="Dialog scripts ([S1] text / Name: text lines), or - for stdin."),
    model: Optional[str] = _model_option(),
    voice: List[str] = typer.Option(None, "--voice", "-v", help="One voice per speaker, in order of appearance."),
    voices: List[str] = typer.Option(None, "--voices", help="NAME=VOICE for a speaker named in the script."),
    voice_repo: Optional[str] = typer.Option(None, "--voice-repo", help=VOICE_REPO_HELP),
    output: Optional[str] = typer.Option(None, "--output", "-o", help=OUTPUT_HELP),
    raw: bool = typer.Option(False, "--raw", help="Write headerless s16le PCM (24 kHz mono)."),
    play: bool = typer.Option(False, "--play", help="Play on the speakers while generating."),
    audio_device: Optional[str] = typer.Option(None, "--audio-device", help="Output sound device for --play."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    srt: bool = typer.Option(False, "--srt", help="Also write word timestamps as SRT subtitles."),
    json_: bool = typer.Option(False, "--json", help="Also write word timestamps as JSON."),
    temperature: float = typer.Option(DEFAULT_TEMPERATURE, "--temperature", help="Sampling temperature (0 = greedy)."),
    cfg: Optional[float] = typer.Option(None, "--cfg", help="Distilled-CFG value 1.0..4.0 (default 2.0)."),
    padding_bonus: float = typer.Option(0.0, "--padding-bonus", help="Added to the PAD logit: > 0 speaks slower."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (same seed, same audio)."),
    n_q: Optional[int] = typer.Option(None, "--n-q", help="Audio codebooks to generate (default: all)."),
    max_padding: int = typer.Option(DEFAULT_MAX_PADDING, "--max-padding", help="Steps before a word is forced."),
    device: str = typer.Option("auto", "--device", help="Torch device: auto, cpu, cuda, cuda:1, mps."),
    dtype: str = dtype_option(),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1, help="Scripts generated in parallel."),
) -> None:
    """Multi-speaker script → one audio with turn-taking (two voices, MAIN then OTHER)."""
    from dsmcli.speak_run import SpeakInput

    if voice and voices:
        raise UsageError("give voices either in order (--voice) or by speaker name (--voices NAME=VOICE)")
    _run(inputs=tuple(SpeakInput(source=s) for s in scripts or []), dialog=True, model=model,
         voices=tuple(voice or []), named_voices=_named_voices(voices), voice_repo=voice_repo, output=output,
         raw=raw, play=play, audio_device=_device(audio_device), force=force, formats=_formats(None, srt, json_),
         options=_options(temperature, cfg, padding_bonus, seed, max_padding), n_q=n_q, device_name=device,
         dtype_name=dtype, batch_size=batch_size)


def _device(name: Optional[str]) -> int | str | None:
    return int(name) if name is not None and name.isdigit() else name


@app.command("voices")
def voices_cmd(
    model: Optional[str] = _model_option(),
    voice_repo: Optional[str] = typer.Option(None, "--voice-repo", help=VOICE_REPO_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print the voices as JSON."),
) -> None:
    """List the voices available offline for a TTS model (cached voices repo or a local folder)."""
    from dsmcli.speak_run import available_voices

    found, origin = available_voices(model, voice_repo)
    if json_out:
        print(json.dumps([{"name": v.name, "kind": v.kind.value, "model": v.model_tag, "path": str(v.path)}
                          for v in found], indent=2))
        return
    for voice in found:
        print(voice.name)
    if not found:
        print(f"dsm: no voices found in {origin}; fetch them with `dsm download {origin}` or pass --voice-repo DIR",
              file=sys.stderr)
