"""The corpus flags of ``dsm transcribe`` / ``dsm speak`` → ``InputSelection`` and ``CorpusOptions``."""

from __future__ import annotations

from collections.abc import Sequence

import typer

from dsmcli.corpus.inputs import InputSelection, Shard, expand_inputs
from dsmcli.corpus.plan import CorpusOptions, RayOptions, split_ray_address
from dsmcli.errors import UsageError

INPUT, OUTPUT, PERFORMANCE = "Input", "Output", "Performance"


def recursive_option():
    return typer.Option(False, "--recursive", "-r", rich_help_panel=INPUT,
                        help="Directories: take the files of their whole tree.")


def glob_option():
    return typer.Option(None, "--glob", rich_help_panel=INPUT,
                        help="Directories: take the files matching PATTERN (e.g. '*.mp3'); "
                             "with no directory, the current one.")


def inputs_option():
    return typer.Option(None, "--inputs", rich_help_panel=INPUT,
                        help="Also read input paths from LIST, one per line (- = stdin).")


def manifest_option():
    return typer.Option(None, "--manifest", rich_help_panel=OUTPUT,
                        help="Append one JSON line per input as it finishes (path, status, error, outputs, times).")


def resume_option():
    return typer.Option(False, "--resume", rich_help_panel=OUTPUT,
                        help="Skip inputs whose outputs all exist (written complete by an earlier run); run the rest.")


def shard_option():
    return typer.Option(None, "--shard", rich_help_panel=OUTPUT,
                        help="I/N: take only part I of N (a stable hash of each path), e.g. a job array's task.")


def selected_inputs(paths: Sequence[str] | None, recursive: bool, glob: str | None, inputs_list: str | None,
                    extensions: frozenset[str]) -> list[str]:
    """The command's inputs after expansion; positional files alone are kept exactly as given."""
    selection = InputSelection(tuple(paths or ()), recursive, glob, inputs_list)
    if not selection.expands:
        return list(selection.paths)
    found = expand_inputs(selection, extensions)
    if not found:
        raise UsageError("no inputs found (check the directories, --glob and --inputs)")
    return found


def corpus_options(manifest: str | None, resume: bool, shard: str | None, ray: bool = False,
                   ray_address: str | None = None, ray_actors: int = 1, ray_gpus: float = 0.0,
                   device: str = "auto", dtype: str = "auto") -> CorpusOptions:
    ray_options = None
    if ray or ray_address is not None:
        ray_options = RayOptions(address=ray_address, actors=ray_actors, gpus_per_actor=ray_gpus,
                                 device=device, dtype=dtype)
    elif ray_actors != 1 or ray_gpus:
        raise UsageError("--ray-actors and --ray-gpus-per-actor need --ray")
    return CorpusOptions(manifest=manifest, resume=resume, shard=Shard.parse(shard) if shard else None,
                         ray=ray_options)


def take_ray_address(sources: list[str], options: CorpusOptions) -> tuple[list[str], CorpusOptions]:
    """``--ray ADDRESS`` (see ``split_ray_address``), unless ``--ray-address`` gave it."""
    if options.ray is None or options.ray.address is not None:
        return sources, options
    kept, address = split_ray_address(sources, True)
    if address is None:
        return sources, options
    from dataclasses import replace

    return kept, replace(options, ray=replace(options.ray, address=address))
