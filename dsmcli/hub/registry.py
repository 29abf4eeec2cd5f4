"""The model registry (``weights.toml``): short names for the released repositories, their roles and defaults."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REGISTRY_PATH = Path(__file__).with_name("weights.toml")
VOICES_ROLE = "voices"  # the role of voices repositories (kyutai/tts-voices)


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    repo: str
    role: str
    description: str = ""
    default: bool = False
    voices: str | None = None


def load_registry(path: Path = REGISTRY_PATH) -> dict[str, RegistryEntry]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return {name: RegistryEntry(name=name, **fields) for name, fields in data["models"].items()}


def default_model(role: str) -> str:
    for entry in load_registry().values():
        if entry.role == role and entry.default:
            return entry.name
    raise KeyError(role)
