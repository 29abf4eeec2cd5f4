"""`dsm models` and `dsm download`."""

from __future__ import annotations

import json
import sys

from dsmcli.hub import files as hub
def _cache_state(entry: hub.RegistryEntry) -> str:
    source = hub.ModelSource(name=entry.name, repo=entry.repo)
    if entry.role == "voices":
        return "yes" if hub.repo_in_cache(entry.repo) else "no"
    return "yes" if source.is_cached() else "no"


def list_models(json_out: bool = False) -> None:
    rows = [(e, _cache_state(e)) for e in hub.load_registry().values()]
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
    registry = hub.load_registry()
    if name in registry and registry[name].role == "voices":
        path = hub.download_repo(registry[name].repo, name)
        console.print(f"voices of {name} in {path}")
        return
    for path in hub.download(name):
        console.print(f"{path}")
