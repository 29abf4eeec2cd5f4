"""`dsm transcribe`: flags → options, inputs → jobs, results → writers. No model logic here."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from dsmcli.commands.common import DECODING, DEVICES, INPUT, MODEL, OUTPUT, PERFORMANCE, dtype_option, examples
from dsmcli.commands.common import kernels_option, resolve_device, resolve_dtype
from dsmcli.corpus import flags
from dsmcli.corpus.inputs import AUDIO_EXTENSIONS
from dsmcli.corpus.plan import run_transcribe as run_corpus
from dsmcli.errors import EXIT_INTERRUPTED, EXIT_OK


TRANSCRIBE_EPILOG = examples(
    "dsm transcribe talk.mp3                      # text on stdout, each word as soon as it is final",
    "dsm transcribe talk.mp3 -o talk.srt          # subtitles (the extension picks the format)",
    "dsm transcribe *.mp3 -f all -o out/          # txt srt vtt tsv json per file, batched",
    "cat talk.mp3 | dsm transcribe - -f jsonl     # stdin (wav/flac/ogg/mp3...) as it arrives",
    "dsm transcribe --mic --srt -o live.srt       # the microphone, until Ctrl-C",
)


def transcribe_cmd(
    inputs: List[str] = typer.Argument(
        None, metavar="FILE...", help="Audio files, or - for audio piped on stdin (wav, flac, ogg, mp3, ...)."),
    raw: bool = typer.Option(False, "--raw", help="Input is headerless s16le PCM (see --rate, --channels).",
                             rich_help_panel=INPUT),
    rate: Optional[int] = typer.Option(None, "--rate", metavar="HZ", help="Sample rate of --raw input (default 24000).",
                                       rich_help_panel=INPUT),
    channels: Optional[int] = typer.Option(None, "--channels", metavar="N", help="Channels of --raw input (default 1).",
                                           rich_help_panel=INPUT),
    output_format: List[str] = typer.Option(
        None, "--format", "-f", metavar="FORMAT", rich_help_panel=OUTPUT,
        help="txt, srt, vtt, tsv, json, jsonl or all (repeatable). Default: the -o file's extension, else txt."),
    srt: bool = typer.Option(False, "--srt", help="Shortcut for --format srt.", rich_help_panel=OUTPUT),
    json_: bool = typer.Option(False, "--json", help="Shortcut for --format json.", rich_help_panel=OUTPUT),
    output: Optional[str] = typer.Option(
        None, "--output", "-o", metavar="PATH", rich_help_panel=OUTPUT,
        help="Output file, directory (existing, or ending with /) or - (stdout). Default: stdout for one input and "
             "format, else <input>.<ext> in the current directory."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs.", rich_help_panel=OUTPUT),
    gap: Optional[float] = typer.Option(None, "--gap", metavar="SECONDS",
                                        help="Start a new segment after a pause this long.", rich_help_panel=OUTPUT),
    max_line_width: Optional[int] = typer.Option(None, "--max-line-width", metavar="N",
                                                 help="Subtitle line width (chars).", rich_help_panel=OUTPUT),
    max_line_count: Optional[int] = typer.Option(None, "--max-line-count", metavar="N",
                                                 help="Lines per cue (with width).", rich_help_panel=OUTPUT),
    max_words_per_line: Optional[int] = typer.Option(None, "--max-words-per-line", metavar="N",
                                                     help="Words per cue line.", rich_help_panel=OUTPUT),
    highlight_words: bool = typer.Option(False, "--highlight-words", help="Underline each word in its cue.",
                                         rich_help_panel=OUTPUT),
    progress: Optional[bool] = typer.Option(
        None, "--progress/--no-progress", rich_help_panel=OUTPUT,
        help="Progress bar per input on stderr. Default: on a terminal, unless the text is printed there."),
    model: str = typer.Option("stt-1b-en_fr", "--model", "-m", metavar="NAME",
                              help="Registry name, Hub repo id or local dir.", rich_help_panel=MODEL),
    temperature: float = typer.Option(0.0, "--temperature", metavar="T", help="Text sampling temperature (0 = greedy).",
                                      rich_help_panel=DECODING),
    seed: Optional[int] = typer.Option(None, "--seed", metavar="N", help="Random seed for --temperature > 0.",
                                       rich_help_panel=DECODING),
    vad: bool = typer.Option(
        False, "--vad", rich_help_panel=DECODING,
        help="Mark semantic ends of turn (jsonl events, json marks, a new cue/line; models with VAD heads)."),
    vad_threshold: float = typer.Option(0.5, "--vad-threshold", metavar="P", help="End-of-turn probability threshold.",
                                        rich_help_panel=DECODING),
    prompt: Optional[str] = typer.Option(
        None, "--prompt", metavar="TEXT", rich_help_panel=DECODING,
        help="Experimental: text forced as the start of what the model writes, e.g. the words of --prompt-audio "
             "to steer a spelling; it is not written to the outputs."),
    prompt_audio: Optional[str] = typer.Option(
        None, "--prompt-audio", metavar="FILE", rich_help_panel=DECODING,
        help="Experimental: audio fed before each input (then 0.8 s of silence) to steer spelling, style or "
             "language; not transcribed, word times stay those of the input."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="Torch device: auto, cpu, cuda, cuda:1, mps.",
                               rich_help_panel=PERFORMANCE),
    dtype: str = dtype_option(),
    kernels: str = kernels_option(),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1, metavar="N", help="Files transcribed in parallel.",
                                   rich_help_panel=PERFORMANCE),
    quantize: str = typer.Option("none", "--quantize", metavar="METHOD",
                                 help="none, int8 or int4 (LM weights; faster on CPU).", rich_help_panel=PERFORMANCE),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, metavar="N",
                                          help="CPU threads (default: all cores).",
                                          rich_help_panel=PERFORMANCE),
    mic: bool = typer.Option(False, "--mic", help="Transcribe the microphone live (Ctrl-C to stop).",
                             rich_help_panel=DEVICES),
    audio_device: Optional[str] = typer.Option(
        None, "--input-device", "--device-in", metavar="DEVICE", rich_help_panel=DEVICES,
        help="Sound input for --mic: an index or (part of) a name from --list-devices. Default: the system's."),
    list_devices: bool = typer.Option(False, "--list-devices", rich_help_panel=DEVICES,
                                      help="List the sound input devices (index, name) and exit."),
    save_audio: Optional[str] = typer.Option(
        None, "--save-audio", metavar="FILE", rich_help_panel=DEVICES,
        help="With --mic: also write what the microphone heard (the samples transcribed) to this .wav or .flac."),
    # corpus runs (dsmcli.corpus): many inputs, recorded, resumable, sharded, on Ray
    recursive: bool = flags.recursive_option(),
    glob: Optional[str] = flags.glob_option(),
    inputs_list: Optional[str] = flags.inputs_option(),
    manifest: Optional[str] = flags.manifest_option(),
    resume: bool = flags.resume_option(),
    shard: Optional[str] = flags.shard_option(),
    ray: bool = typer.Option(False, "--ray", rich_help_panel=flags.PERFORMANCE,
                             help="Run on a Ray cluster: --ray [ADDRESS] (default: RAY_ADDRESS, else a local one)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", rich_help_panel=flags.PERFORMANCE,
                                              help="Ray cluster address (implies --ray)."),
    ray_actors: int = typer.Option(1, "--ray-actors", min=1, rich_help_panel=flags.PERFORMANCE,
                                   help="Ray actors, each holding the model once."),
    ray_gpus: float = typer.Option(0.0, "--ray-gpus-per-actor", min=0.0, rich_help_panel=flags.PERFORMANCE,
                                   help="GPUs per Ray actor (fractions share a GPU)."),
) -> None:
    """Speech → text with word timestamps, streaming. Many files are batched; - reads stdin as it arrives."""
    from dsmcli.commands import transcribe_run as run

    if list_devices:
        from dsmcli.audio.live import device_lines

        print("\n".join(device_lines("input")))
        return
    formats = run.pick_formats(output_format, srt=srt, json_=json_)
    corpus = flags.corpus_options(manifest, resume, shard, ray, ray_address, ray_actors, ray_gpus, device, dtype)
    paths, corpus = flags.take_ray_address(list(inputs or []), corpus)
    sources = run.pick_sources(flags.selected_inputs(paths, recursive, glob, inputs_list, AUDIO_EXTENSIONS), mic=mic)
    request = run.Request(
        sources=sources, formats=formats, output=output, force=force, model=model,
        device=resolve_device(device), dtype=resolve_dtype(dtype, device), batch_size=batch_size,
        raw=raw, rate=rate, channels=channels, audio_device=audio_device,
        options=run.transcribe_options(temperature, seed, vad, vad_threshold),
        writer_options=run.writer_options(max_line_width, max_line_count, max_words_per_line, highlight_words),
        segment_options=run.segment_options(gap, vad),
        progress=progress, quantize=run.quantize_method(quantize), kernels=kernels, threads=threads,
        save_audio=save_audio,
        prompt_text=prompt, prompt_audio=prompt_audio,
    )
    try:
        result = run_corpus(request, corpus) if corpus.active else run.execute(request)
    except KeyboardInterrupt:  # before any output was opened (e.g. while the model loads)
        run.report("interrupted", "error")
        sys.exit(EXIT_INTERRUPTED)
    if result.interrupted and corpus.active:
        run.report("interrupted; finished inputs are written, unfinished ones left no output (rerun with --resume)")
    elif result.interrupted:
        run.report("interrupted; the outputs hold everything transcribed until then", "error")
    if result.exit_code != EXIT_OK:
        sys.exit(result.exit_code)  # SystemExit: Typer returns typer.Exit codes to `main` without exiting
