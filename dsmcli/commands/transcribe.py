"""`dsm transcribe`: flags → options, inputs → jobs, results → writers. No model logic here."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from dsmcli.cli import app
from dsmcli.commands.common import dtype_option, resolve_device, resolve_dtype
from dsmcli.corpus import flags
from dsmcli.corpus.inputs import AUDIO_EXTENSIONS
from dsmcli.corpus.plan import run_transcribe as run_corpus
from dsmcli.errors import EXIT_INTERRUPTED, EXIT_OK


@app.command("transcribe")
def transcribe_cmd(
    inputs: List[str] = typer.Argument(None, help="Audio files, or - for audio piped on stdin (WAV or --raw)."),
    model: str = typer.Option("stt-1b-en_fr", "--model", "-m", help="Registry name, Hub repo id or local dir."),
    output_format: List[str] = typer.Option(
        None, "--format", "-f", help="txt, srt, vtt, tsv, json, jsonl or all (repeatable). Default: txt."),
    srt: bool = typer.Option(False, "--srt", help="Shortcut for --format srt."),
    json_: bool = typer.Option(False, "--json", help="Shortcut for --format json."),
    output: Optional[str] = typer.Option(
        None, "--output", "-o",
        help="Output file or directory (- = stdout). Default: stdout for one input, else the current directory."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    mic: bool = typer.Option(False, "--mic", help="Transcribe the microphone live (Ctrl-C to stop)."),
    audio_device: Optional[str] = typer.Option(None, "--audio-device", help="Input sound device for --mic."),
    list_devices: bool = typer.Option(False, "--list-devices", help="List sound devices and exit."),
    raw: bool = typer.Option(False, "--raw", help="Input is headerless s16le PCM (see --rate, --channels)."),
    rate: Optional[int] = typer.Option(None, "--rate", help="Sample rate of --raw input (default 24000)."),
    channels: Optional[int] = typer.Option(None, "--channels", help="Channels of --raw input (default 1)."),
    device: str = typer.Option("auto", "--device", help="Torch device: auto, cpu, cuda, cuda:1, mps."),
    dtype: str = dtype_option(),
    temperature: float = typer.Option(0.0, "--temperature", help="Text sampling temperature (0 = greedy)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed for --temperature > 0."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1, help="Files transcribed in parallel."),
    vad: bool = typer.Option(
        False, "--vad", help="Mark semantic ends of turn (jsonl events, json marks, a new cue/line; models with VAD heads)."),
    vad_threshold: float = typer.Option(0.5, "--vad-threshold", help="End-of-turn probability threshold."),
    gap: Optional[float] = typer.Option(None, "--gap", help="Start a new segment after a pause this long (s)."),
    max_line_width: Optional[int] = typer.Option(None, "--max-line-width", help="Subtitle line width (chars)."),
    max_line_count: Optional[int] = typer.Option(None, "--max-line-count", help="Lines per cue (with width)."),
    max_words_per_line: Optional[int] = typer.Option(None, "--max-words-per-line", help="Words per cue line."),
    highlight_words: bool = typer.Option(False, "--highlight-words", help="Underline each word in its cue."),
    progress: Optional[bool] = typer.Option(
        None, "--progress/--no-progress",
        help="Progress bar per input on stderr. Default: on a terminal, unless the text is printed there."),
    quantize: str = typer.Option("none", "--quantize", help="none, or int8 (LM weights; faster on CPU)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads (default: all cores)."),
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
        from dsmcli.live import list_devices as list_sound_devices

        for found in list_sound_devices():
            default = " [default input]" if found.is_default_input else ""
            print(f"{found.index}: {found.name} ({found.max_input_channels} in, {found.max_output_channels} out, "
                  f"{found.default_samplerate:g} Hz){default}")
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
        progress=progress, quantize=run.quantize_method(quantize), threads=threads,
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
