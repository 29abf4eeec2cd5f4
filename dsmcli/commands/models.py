"""`dsm models` and `dsm download`: the registry, the cache, and fetching a model's files ahead of time."""

from __future__ import annotations

import json
import sys

import typer

from dsmcli.commands.common import OUTPUT, examples
from dsmcli.hub import checkpoint, registry
from dsmcli.hub import files as hub

MODELS_EPILOG = examples("dsm models", "dsm models --json | jq '.[] | select(.cached)'")
DOWNLOAD_EPILOG = examples("dsm download stt-1b-en_fr", "dsm download tts-1.6b-en_fr && dsm download tts-voices",
                           "dsm download kyutai/stt-2.6b-en")


def models_cmd(
    json_out: bool = typer.Option(False, "--json", help="Print the registry as JSON.", rich_help_panel=OUTPUT),
) -> None:
    """List the model registry (weights.toml) and what is in the local cache."""
    list_models(json_out=json_out)


def download_cmd(
    model: str = typer.Argument(..., metavar="MODEL", help="Registry name, Hub repo id, or local directory."),
) -> None:
    """Fetch a model's files into the Hugging Face cache ahead of time."""
    download_model(model)


def _cache_state(entry: registry.RegistryEntry) -> str:
    source = hub.ModelSource(name=entry.name, repo=entry.repo)
    if entry.role == "voices":
        return "yes" if hub.repo_in_cache(entry.repo) else "no"
    return "yes" if source.is_cached() else "no"


def list_models(json_out: bool = False) -> None:
    rows = [(e, _cache_state(e)) for e in registry.load_registry().values()]
    if json_out:
        data = [
            {"name": e.name, "repo": e.repo, "role": e.role, "default": e.default, "cached": c == "yes",
             "description": e.description}
            for e, c in rows
        ]
        print(json.dumps(data, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"models (cache: {hub.cache_dir()})", title_justify="left")
    for column in ("name", "role", "repo", "cached", "description"):
        table.add_column(column, no_wrap=column != "description")
    for entry, cached in rows:
        name = entry.name + (" *" if entry.default else "")
        table.add_row(name, entry.role, entry.repo, cached, entry.description)
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table)
    console.print("* default for its role")


def download_model(name: str) -> None:
    from rich.console import Console

    console = Console(stderr=True)
    entries = registry.load_registry()
    if name in entries and entries[name].role == registry.VOICES_ROLE:
        path = hub.download_repo(entries[name].repo, name)
        console.print(f"voices of {name} in {path}")
        return
    for path in checkpoint.download(name):
        console.print(f"{path}")
