"""The corpus run of ``dsm transcribe``: shard, ``--resume`` check, manifest, then one process or Ray.

``--resume`` skips an input when every file it writes exists under its final name: corpus runs write each
output to a temporary and rename it only when complete (``dsmcli.outputs.atomic``), and drop the temporaries
of an input that fails or is interrupted, so a final name means a finished output. The other inputs run, and
may overwrite what a killed run left of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from dsmcli.corpus.inputs import STDIN
from dsmcli.corpus.manifest import Manifest
from dsmcli.corpus.options import CorpusOptions, RayOptions  # noqa: F401 - imported from here too
from dsmcli.corpus.record import Recorder
from dsmcli.errors import DsmError, UsageError

LIVE_SOURCES = (STDIN, "<mic>")
RAY_ADDRESS = re.compile(r"^(auto|local|(ray|https?)://\S+|[\w.-]+:\d+)$")


def split_ray_address(sources: Sequence[str], ray: bool) -> tuple[list[str], str | None]:
    """``--ray ADDRESS``: the CLI's ``--ray`` is a flag, so an address written after it arrives as an input;
    take an input that is not a file and reads as a Ray address (``host:port``, ``ray://…``, ``auto``)."""
    if not ray:
        return list(sources), None
    kept, address = [], None
    for source in sources:
        if address is None and RAY_ADDRESS.match(source) and not Path(source).exists():
            address = source
        else:
            kept.append(source)
    return kept, address


def check_sources(sources: Sequence[str], options: CorpusOptions) -> None:
    live = [s for s in sources if s in LIVE_SOURCES]
    if live and (options.resume or options.shard or options.ray):
        raise UsageError("--resume, --shard and --ray take files, not stdin or the microphone")


def resumable(sources: Sequence[str], outputs_of: Callable[[str], list[Path]], recorder: Recorder) -> list[str]:
    """The inputs still to run; the others (every output file exists) are recorded as ``skipped``."""
    todo = []
    for source in sources:
        outputs = outputs_of(source)
        if outputs and all(path.is_file() for path in outputs):
            recorder.skipped(source, [str(path) for path in outputs])
        else:
            todo.append(source)
    return todo


def run_transcribe(request, options: CorpusOptions):  # (transcribe_run.Request, CorpusOptions) -> RunResult
    """Shard, skip what is done, record, and run the rest in this process or on Ray."""
    from dsmcli.commands import transcribe_run as run

    check_sources(request.sources, options)
    if request.output is None and (len(request.sources) > 1 or options.shard or options.ray):
        request = replace(request, output=".")  # where a multi-input run writes, whatever this shard holds
    sources = options.shard.select(request.sources) if options.shard else list(request.sources)
    manifest = Manifest(options.manifest) if options.manifest else None
    try:
        recorder = Recorder(request.model, manifest)
        if options.resume:
            sources = resumable(sources, lambda s: run.planned_outputs(request, s), recorder)
        request = replace(request, sources=sources, recorder=recorder, atomic=True,
                          force=request.force or options.resume)
        if not sources:
            return run.RunResult(total=0)
        if options.ray is not None:
            from dsmcli.corpus.ray_runner import run_on_ray

            return run_on_ray(request, options.ray)
        return run.execute(request)
    finally:
        if manifest is not None:
            manifest.close()


def run_speak(request, options: CorpusOptions):  # (speak_run.SpeakRequest, CorpusOptions) -> speak_run.RunResult
    """``dsm speak`` over many text files: shard, skip what is done, record, run the rest in this process."""
    from dsmcli.commands.speak_output import plan_outputs
    from dsmcli.commands.speak_run import RunResult, execute

    if options.ray is not None:
        raise UsageError("--ray runs dsm transcribe; for dsm speak use --shard on each machine")
    names = [item.source or "" for item in request.inputs]
    check_sources(names, options)
    if request.output is None and not request.play and len(request.inputs) > 1 or options.shard:
        request = replace(request, output=request.output or ".")
    keep = [i for i, name in enumerate(names) if options.shard is None or options.shard.takes(name)]
    manifest = Manifest(options.manifest) if options.manifest else None
    try:
        recorder = Recorder(request.model, manifest, unit="characters")
        if options.resume:
            plans = plan_outputs([(i.name, i.stem) for i in request.inputs], request.output, raw=request.raw,
                                 play=request.play, formats=list(request.formats), force=True)
            files = {i: [Path(p) for p in _plan_files(plans[i])] for i in keep}
            todo = set(resumable([names[i] for i in keep], lambda n: files[names.index(n)], recorder))
            keep = [i for i in keep if names[i] in todo]
        voices = request.voices
        if len(voices) == len(request.inputs) > 1:  # one voice per input: keep each with its input
            voices = tuple(voices[i] for i in keep)
        request = replace(request, inputs=tuple(request.inputs[i] for i in keep), voices=voices, recorder=recorder,
                          atomic=True, force=request.force or options.resume)
        try:
            return execute(request) if keep else RunResult(total=0)
        except DsmError as error:  # one input left: its failure is raised, not recorded by its sink
            if len(keep) == 1 and not isinstance(error, UsageError) and not recorder.rows:
                recorder.failed(names[keep[0]], error)
            raise
    finally:
        if manifest is not None:
            manifest.close()


def _plan_files(plan) -> list[str]:
    audio = [plan.audio] if plan.audio not in (None, STDIN) else []
    return audio + [str(path) for _, path in plan.subtitles]
