"""`dsm speak`, `dsm dialog`, `dsm voices`: flags → a SpeakRequest → dsmcli.commands.speak_run. No model logic here."""

from __future__ import annotations

import json
import sys
from typing import List, Optional

import typer

from dsmcli.commands.common import DECODING, DEVICES, INPUT, MODEL, OUTPUT, PERFORMANCE, dtype_option, examples
from dsmcli.commands.common import kernels_option, resolve_device, resolve_dtype
from dsmcli.corpus import flags
from dsmcli.corpus.inputs import TEXT_EXTENSIONS
from dsmcli.corpus.plan import CorpusOptions, run_speak
from dsmcli.errors import EXIT_INTERRUPTED, ModelLoadError, UsageError
from dsmcli.tts.options import DEFAULT_MAX_PADDING, DEFAULT_TEMPERATURE, SpeakOptions

MODEL_HELP = "TTS model: registry name, Hub repo id or local dir. Default: the registry's default TTS model."
VOICE_REPO_HELP = "Voices repository (registry name, Hub repo id or local dir) for --voice paths."
THREADS_HELP = "CPU threads (default: one per physical core)."
OUTPUT_HELP = ("Audio output: FILE (.wav or none, .flac, .ogg, .raw), DIR (existing, or ending with /: one <input>.wav "
               "each) or - (WAV on stdout, raw s16le with --raw). Default: <input>.wav in the current directory "
               "(none with --play).")


def _threads_option():
    return typer.Option(None, "--threads", min=1, metavar="N", help=THREADS_HELP, rich_help_panel=PERFORMANCE)


def _quantize_option():
    return typer.Option("none", "--quantize", metavar="METHOD", help=QUANTIZE_HELP, rich_help_panel=PERFORMANCE)


def _play_option():
    return typer.Option(False, "--play", help="Play on the speakers while generating.", rich_help_panel=DEVICES)


def _output_device_option():
    return typer.Option(
        None, "--output-device", "--device-out", metavar="DEVICE", rich_help_panel=DEVICES,
        help="Sound output for --play: an index or (part of) a name from --list-devices. Default: the system's.")


def _list_devices_option():
    return typer.Option(False, "--list-devices", rich_help_panel=DEVICES,
                        help="List the sound output devices (index, name) and exit.")


def _model_option():
    return typer.Option(None, "--model", "-m", metavar="NAME", help=MODEL_HELP, rich_help_panel=MODEL)


def _output_option():
    return typer.Option(None, "--output", "-o", metavar="PATH", help=OUTPUT_HELP, rich_help_panel=OUTPUT)


def _raw_option():
    return typer.Option(False, "--raw", help="Write headerless s16le PCM (24 kHz mono).", rich_help_panel=OUTPUT)


def _force_option():
    return typer.Option(False, "--force", help="Overwrite existing outputs.", rich_help_panel=OUTPUT)


def _srt_option():
    return typer.Option(False, "--srt", help="Also write word timestamps as SRT subtitles.", rich_help_panel=OUTPUT)


def _json_option():
    return typer.Option(False, "--json", help="Also write word timestamps as JSON.", rich_help_panel=OUTPUT)


def _voice_repo_option():
    return typer.Option(None, "--voice-repo", metavar="REPO", help=VOICE_REPO_HELP, rich_help_panel=MODEL)


def _temperature_option():
    return typer.Option(DEFAULT_TEMPERATURE, "--temperature", metavar="T", help="Sampling temperature (0 = greedy).",
                        rich_help_panel=DECODING)


def _cfg_option():
    return typer.Option(None, "--cfg", metavar="X", rich_help_panel=DECODING,
                        help="Guidance: a LUT value 1.0..4.0 for distilled models, the real coefficient otherwise "
                             "(1 = off). Default 2.0.")


def _padding_bonus_option():
    return typer.Option(0.0, "--padding-bonus", metavar="X", help="Added to the PAD logit: > 0 speaks slower.",
                        rich_help_panel=DECODING)


def _seed_option():
    return typer.Option(None, "--seed", metavar="N", help="Random seed (same seed, same audio).",
                        rich_help_panel=DECODING)


def _n_q_option():
    return typer.Option(None, "--n-q", metavar="N", help="Audio codebooks to generate (default: all).",
                        rich_help_panel=DECODING)


def _max_padding_option():
    return typer.Option(DEFAULT_MAX_PADDING, "--max-padding", metavar="N", help="Steps before a word is forced.",
                        rich_help_panel=DECODING)


def _device_option():
    return typer.Option("auto", "--device", metavar="DEVICE", help="Torch device: auto, cpu, cuda, cuda:1, mps.",
                        rich_help_panel=PERFORMANCE)


def _batch_size_option(what: str):
    return typer.Option(8, "--batch-size", "-b", min=1, metavar="N", help=f"{what} generated in parallel.",
                        rich_help_panel=PERFORMANCE)


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


QUANTIZE_HELP = "none, int8 or int4: the LM's weights (faster on CPU; int8 is the accurate one)."


def _quantize(name: str) -> str:
    from dsmcli.engine.quantize import QuantMethod

    try:
        return QuantMethod(name).value
    except ValueError:
        raise UsageError(f"--quantize: unknown method {name!r} (none, int8, int4)") from None


def _run(corpus: CorpusOptions | None = None, **fields) -> None:
    from dsmcli.hub.registry import default_model
    from dsmcli.cpu_threads import set_threads
    from dsmcli.commands.speak_run import SpeakRequest, execute

    set_threads(fields.pop("threads"))
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


SPEAK_EPILOG = examples(
    'dsm speak --text "Hello world." -o hello.wav --srt     # hello.wav and its word timings, hello.srt',
    'llm "tell a story" | dsm speak - --play               # speaks while the text still arrives',
    "dsm speak a.txt b.txt -o out/ --voice expresso/ex01-ex02_default_001_channel1_168s.wav",
    "dsm speak note.txt -o - --raw | aplay -r 24000 -f S16_LE -c 1 -t raw -",
    "dsm speak note.txt -m tts-0.75b-en-public --voice my_voice.mp3 -o clone.wav",
)


def speak_cmd(
    inputs: List[str] = typer.Argument(None, metavar="FILE...",
                                       help="UTF-8 text files, or - to speak stdin as the text arrives."),
    text: Optional[str] = typer.Option(None, "--text", "-t", metavar="TEXT", help="Speak this text (instead of files).",
                                       rich_help_panel=INPUT),
    output: Optional[str] = _output_option(),
    raw: bool = _raw_option(),
    force: bool = _force_option(),
    srt: bool = _srt_option(),
    json_: bool = _json_option(),
    formats: Optional[List[str]] = typer.Option(None, "--format", "-f", metavar="FORMAT", rich_help_panel=OUTPUT,
                                                help="Word-timestamp formats: srt, vtt, tsv, txt, json, jsonl "
                                                     "(repeatable)."),
    model: Optional[str] = _model_option(),
    voice: List[str] = typer.Option(
        None, "--voice", "-v", metavar="VOICE", rich_help_panel=MODEL,
        help="Voice: a path in the voices repo, a local .safetensors embedding or .wav with its embedding beside it "
             "(tts-1.6b); any audio file (tts-0.75b). Once for all inputs, or once per input."),
    voice_repo: Optional[str] = _voice_repo_option(),
    temperature: float = _temperature_option(),
    cfg: Optional[float] = _cfg_option(),
    padding_bonus: float = _padding_bonus_option(),
    seed: Optional[int] = _seed_option(),
    n_q: Optional[int] = _n_q_option(),
    max_padding: int = _max_padding_option(),
    device: str = _device_option(),
    dtype: str = dtype_option(),
    kernels: str = kernels_option(),
    batch_size: int = _batch_size_option("Inputs"),
    threads: Optional[int] = _threads_option(),
    quantize: str = _quantize_option(),
    play: bool = _play_option(),
    audio_device: Optional[str] = _output_device_option(),
    list_devices: bool = _list_devices_option(),
    # corpus runs (dsmcli.corpus): many text files, recorded, resumable, sharded
    recursive: bool = flags.recursive_option(),
    glob: Optional[str] = flags.glob_option(),
    inputs_list: Optional[str] = flags.inputs_option(),
    manifest: Optional[str] = flags.manifest_option(),
    resume: bool = flags.resume_option(),
    shard: Optional[str] = flags.shard_option(),
) -> None:
    """Text → speech, streaming. Several files run as parallel batch slots; - speaks stdin as it arrives."""
    from dsmcli.commands.speak_run import SpeakInput

    _list_devices_and_exit(list_devices)
    if text is not None and inputs:
        raise UsageError("give either text files or --text, not both")
    corpus = flags.corpus_options(manifest, resume, shard)
    inputs = flags.selected_inputs(inputs, recursive, glob, inputs_list, TEXT_EXTENSIONS)
    items = (SpeakInput(text=text),) if text is not None else tuple(SpeakInput(source=s) for s in inputs or [])
    _run(inputs=items, model=model, voices=tuple(voice or []), voice_repo=voice_repo, output=output, raw=raw,
         play=play, audio_device=_device(audio_device), force=force, formats=_formats(formats, srt, json_),
         options=_options(temperature, cfg, padding_bonus, seed, max_padding), n_q=n_q, device_name=device,
         dtype_name=dtype, batch_size=batch_size, threads=threads,
         quantize=_quantize(quantize), kernels=kernels, corpus=corpus)


DIALOG_EPILOG = examples(
    "dsm dialog talk.txt -v vctk/p225_023.wav -v vctk/p226_023.wav -o talk.wav   # [S1]/[S2] lines, a voice each",
    "dsm dialog talk.txt --voices Alice=vctk/p225_023.wav --voices Bob=vctk/p226_023.wav -o talk.wav",
    "cat talk.txt | dsm dialog - --play --srt -o talk.wav",
)


def dialog_cmd(
    scripts: List[str] = typer.Argument(None, metavar="SCRIPT...",
                                        help="Dialog scripts ([S1] text / Name: text lines), or - for stdin."),
    output: Optional[str] = _output_option(),
    raw: bool = _raw_option(),
    force: bool = _force_option(),
    srt: bool = _srt_option(),
    json_: bool = _json_option(),
    model: Optional[str] = _model_option(),
    voice: List[str] = typer.Option(None, "--voice", "-v", metavar="VOICE", rich_help_panel=MODEL,
                                    help="One voice per speaker, in order of appearance."),
    voices: List[str] = typer.Option(None, "--voices", metavar="NAME=VOICE", rich_help_panel=MODEL,
                                     help="The voice of a speaker named in the script."),
    voice_repo: Optional[str] = _voice_repo_option(),
    temperature: float = _temperature_option(),
    cfg: Optional[float] = _cfg_option(),
    padding_bonus: float = _padding_bonus_option(),
    seed: Optional[int] = _seed_option(),
    n_q: Optional[int] = _n_q_option(),
    max_padding: int = _max_padding_option(),
    device: str = _device_option(),
    dtype: str = dtype_option(),
    kernels: str = kernels_option(),
    batch_size: int = _batch_size_option("Scripts"),
    threads: Optional[int] = _threads_option(),
    quantize: str = _quantize_option(),
    play: bool = _play_option(),
    audio_device: Optional[str] = _output_device_option(),
    list_devices: bool = _list_devices_option(),
) -> None:
    """Multi-speaker script → one audio with turn-taking (two voices, MAIN then OTHER)."""
    from dsmcli.commands.speak_run import SpeakInput

    _list_devices_and_exit(list_devices)
    if voice and voices:
        raise UsageError("give voices either in order (--voice) or by speaker name (--voices NAME=VOICE)")
    _run(inputs=tuple(SpeakInput(source=s) for s in scripts or []), dialog=True, model=model,
         voices=tuple(voice or []), named_voices=_named_voices(voices), voice_repo=voice_repo, output=output,
         raw=raw, play=play, audio_device=_device(audio_device), force=force, formats=_formats(None, srt, json_),
         options=_options(temperature, cfg, padding_bonus, seed, max_padding), n_q=n_q, device_name=device,
         dtype_name=dtype, batch_size=batch_size, threads=threads,
         quantize=_quantize(quantize), kernels=kernels)


def _device(name: Optional[str]) -> int | str | None:
    from dsmcli.audio.live import parse_device

    return parse_device(name)


def _list_devices_and_exit(wanted: bool) -> None:
    """``--list-devices``: the output devices --output-device takes, then exit 0."""
    if wanted:
        from dsmcli.audio.live import device_lines

        print("\n".join(device_lines("output")))
        sys.exit(0)


VOICES_EPILOG = examples("dsm voices", "dsm voices --json", "dsm voices --voice-repo ./my_voices")


def voices_cmd(
    json_out: bool = typer.Option(False, "--json", help="Print the voices as JSON.", rich_help_panel=OUTPUT),
    model: Optional[str] = _model_option(),
    voice_repo: Optional[str] = _voice_repo_option(),
) -> None:
    """List the voices available offline for a TTS model (cached voices repo or a local folder)."""
    from dsmcli.commands.speak_run import available_voices

    found, origin = available_voices(model, voice_repo)
    if not found:
        raise ModelLoadError(f"no voices found in {origin}; fetch them with `dsm download {origin}` "
                             f"or pass --voice-repo DIR")
    if json_out:
        print(json.dumps([{"name": v.name, "kind": v.kind.value, "model": v.model_tag, "path": str(v.path)}
                          for v in found], indent=2))
        return
    for voice in found:
        print(voice.name)
