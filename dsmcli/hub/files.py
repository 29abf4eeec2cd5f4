"""Model registry (weights.toml) and checkpoint files on disk.

A model argument is one of:
  * a registry name from weights.toml (``stt-1b-en_fr``),
  * a Hugging Face Hub repo id (``kyutai/stt-1b-en_fr``),
  * a local directory laid out like a Hub repo (``config.json`` + the files it names).

Files come from ``huggingface_hub`` (cache under ``HF_HOME`` / ``HF_HUB_CACHE``;
``HF_HUB_OFFLINE=1`` is honoured). Nothing here builds a model.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from dsmcli.errors import ModelLoadError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REGISTRY_PATH = Path(__file__).with_name("weights.toml")

# Defaults of the released config.json schema (FORMAT.md §1.2).
DEFAULT_LM_NAME = "model.safetensors"
DEFAULT_MIMI_NAME = "tokenizer-e351c8d8-checkpoint125.safetensors"
DEFAULT_TOKENIZER_NAME = "tokenizer_spm_32k_3.model"
CONFIG_NAME = "config.json"


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


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _download_hint(name: str) -> str:
    return f"run `dsm download {name}` where the Hub is reachable, or pass a local directory"


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files come from: a local directory or a Hub repo (with optional revision)."""

    name: str  # what the user typed
    repo: str | None = None
    local_dir: Path | None = None
    revision: str | None = None

    def fetch(self, filename: str) -> Path:
        """Path of ``filename`` in this model (downloads into the HF cache if needed)."""
        if filename.startswith("file://"):
            return self._check_local(Path(filename.removeprefix("file://")))
        if filename.startswith("hf://"):
            owner, repo, *rest = filename.removeprefix("hf://").split("/")
            return ModelSource(name=f"{owner}/{repo}", repo=f"{owner}/{repo}").fetch("/".join(rest))
        if self.local_dir is not None:
            return self._check_local(self.local_dir / filename)
        assert self.repo is not None
        return hub_download(self.repo, filename, self.revision, hint_name=self.name)

    def _check_local(self, path: Path) -> Path:
        if not path.is_file():
            raise ModelLoadError(f"missing file {path} in local model {self.name}")
        return path

    def is_cached(self) -> bool:
        """True when config.json is available without the network."""
        if self.local_dir is not None:
            return (self.local_dir / CONFIG_NAME).is_file()
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(self.repo, CONFIG_NAME, revision=self.revision)
        return isinstance(found, str)


class NotCachedError(ModelLoadError):
    """A file is not in the local cache and the Hub cannot be reached (or HF_HUB_OFFLINE=1).

    ``what`` names the missing file; the message adds the remedy (``hint``)."""

    def __init__(self, what: str, hint: str) -> None:
        super().__init__(f"{what}: {hint}")
        self.what = what


_LOCAL_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("dsm_hub_local_only", default=False)


@contextlib.contextmanager
def local_files_only() -> Iterator[None]:
    """Within this block, Hub files come from the local cache only (never the network), as with
    HF_HUB_OFFLINE=1: ``dsm voices`` lists what is on disk without contacting the Hub."""
    token = _LOCAL_ONLY.set(True)
    try:
        yield
    finally:
        _LOCAL_ONLY.reset(token)


PROBE_TIMEOUT_S = 10.0  # one HEAD request: huggingface_hub's own metadata timeout


def _is_cached(repo: str, filename: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, filename, revision=revision), str)


def _probe(repo: str, filename: str, revision: str | None, hint: str) -> None:
    """One HEAD request for a file that is not cached, without retries.

    ``hf_hub_download`` retries a failed connection five times with back-off (~25 s of ``Retrying in 8s``
    lines) when the file is not cached; this fails at once instead. Hub answers (404, gated, 5xx) propagate as
    huggingface_hub errors; a network failure becomes a NotCachedError."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub import errors as hf_errors

    try:
        get_hf_file_metadata(hf_hub_url(repo, filename, revision=revision), timeout=PROBE_TIMEOUT_S)
    except hf_errors.HfHubHTTPError:
        raise
    except Exception as exc:  # noqa: BLE001 - httpx / requests / OSError: the Hub is not reachable from here
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise NotCachedError(f"cannot reach the Hub ({constants.ENDPOINT}: {reason}) and {repo}/{filename} "
                             f"is not cached", hint) from None


def hub_download(repo: str, filename: str, revision: str | None = None, hint_name: str | None = None) -> Path:
    """``hf_hub_download`` with the failures turned into one-line ModelLoadErrors, and no retries when the Hub
    cannot be reached and the file is not cached (see :func:`_probe`)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub import errors as hf_errors

    hint = _download_hint(hint_name or repo)
    local_only = _LOCAL_ONLY.get()
    try:
        if not (_offline() or local_only or _is_cached(repo, filename, revision)):
            _probe(repo, filename, revision, hint)
        return Path(hf_hub_download(repo, filename, revision=revision, local_files_only=local_only))
    except hf_errors.LocalEntryNotFoundError:  # subclass of EntryNotFoundError: test it first
        if local_only and not _offline():
            raise NotCachedError(f"{repo}/{filename} is not in the local cache", hint) from None
        if _offline():
            raise NotCachedError(f"{repo}/{filename} is not in the local cache and HF_HUB_OFFLINE=1", hint) from None
        raise NotCachedError(f"cannot reach the Hub for {repo}/{filename} and it is not cached", hint) from None
    except hf_errors.EntryNotFoundError:
        raise ModelLoadError(f"{repo} has no file {filename}") from None
    except hf_errors.RepositoryNotFoundError:
        raise ModelLoadError(f"no model repository {repo} on the Hub (or it is private: set HF_TOKEN)") from None
    except (OSError, hf_errors.HfHubHTTPError) as exc:
        raise ModelLoadError(f"cannot download {repo}/{filename}: {exc.__class__.__name__}: {hint}") from None


def resolve_source(name_or_path: str | Path) -> ModelSource:
    """Registry name, ``owner/repo[@revision]``, or a local directory → a ModelSource."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return ModelSource(name=text, local_dir=path)
    registry = load_registry()
    if text in registry:
        return ModelSource(name=text, repo=registry[text].repo)
    repo, _, revision = text.partition("@")
    if repo.count("/") == 1 and not path.exists() and not text.startswith((".", "/", "~")):
        return ModelSource(name=text, repo=repo, revision=revision or None)
    if path.exists():
        raise ModelLoadError(f"{text} is not a model directory (expected a folder with {CONFIG_NAME})")
    known = ", ".join(sorted(registry))
    raise ModelLoadError(f"unknown model {text!r}: use one of {known}, a Hub repo id, or a local directory")


@dataclass(frozen=True)
class Checkpoint:
    """A released DSM checkpoint: its ``config.json`` split as the reference does (FORMAT.md §1.2).

    ``lm_kwargs`` holds the architecture keys left after popping the file names and task configs.
    Files are fetched lazily, so loading only Mimi downloads only Mimi.
    """

    source: ModelSource
    raw_config: dict[str, Any]
    lm_name: str = DEFAULT_LM_NAME
    mimi_name: str = DEFAULT_MIMI_NAME
    mimi_config_name: str | None = None
    tokenizer_name: str = DEFAULT_TOKENIZER_NAME
    model_type: str = "moshi"
    lm_gen_config: dict[str, Any] = field(default_factory=dict)
    tts_config: dict[str, Any] = field(default_factory=dict)
    stt_config: dict[str, Any] = field(default_factory=dict)
    model_id: dict[str, Any] = field(default_factory=dict)
    lm_kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, source: ModelSource, raw: dict[str, Any]) -> "Checkpoint":
        rest = dict(raw)
        if rest.pop("lora_name", None):
            raise ModelLoadError(f"{source.name}: LoRA checkpoints are not supported")
        return cls(
            source=source,
            raw_config=raw,
            lm_name=rest.pop("moshi_name", DEFAULT_LM_NAME),
            mimi_name=rest.pop("mimi_name", DEFAULT_MIMI_NAME),
            mimi_config_name=rest.pop("mimi_config_name", None),
            tokenizer_name=rest.pop("tokenizer_name", DEFAULT_TOKENIZER_NAME),
            model_type=rest.pop("model_type", "moshi"),
            lm_gen_config=rest.pop("lm_gen_config", {}),
            tts_config=rest.pop("tts_config", {}),
            stt_config=rest.pop("stt_config", {}),
            model_id=rest.pop("model_id", {}),
            lm_kwargs=rest,
        )

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def lm_path(self) -> Path:
        return self.source.fetch(self.lm_name)

    @property
    def mimi_path(self) -> Path:
        return self.source.fetch(self.mimi_name)

    @property
    def tokenizer_path(self) -> Path:
        return self.source.fetch(self.tokenizer_name)

    @cached_property
    def mimi_config(self) -> dict[str, Any] | None:
        """The optional Mimi hyper-parameter override (``mimi_config_name``), else None (released sizes)."""
        if self.mimi_config_name is None:
            return None
        return _read_json(self.source.fetch(self.mimi_config_name), self.name)


def _read_json(path: Path, name: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{name}: cannot read {path.name}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{name}: {path.name} is not a JSON object")
    return data


def load_checkpoint(name_or_path: str | Path) -> Checkpoint:
    """Resolve a model argument and read its config.json (the only file fetched here)."""
    source = resolve_source(name_or_path)
    config = _read_json(source.fetch(CONFIG_NAME), source.name)
    return Checkpoint.from_config(source, config)


def download(name_or_path: str) -> list[Path]:
    """Fetch every file a checkpoint needs (config, LM, Mimi, tokenizer, Mimi override) ahead of time."""
    ckpt = load_checkpoint(name_or_path)
    if ckpt.raw_config.get("model_type") is None and "dim" not in ckpt.raw_config:
        return [ckpt.source.fetch(CONFIG_NAME)]
    paths = [ckpt.source.fetch(CONFIG_NAME), ckpt.lm_path, ckpt.mimi_path, ckpt.tokenizer_path]
    if ckpt.mimi_config_name:
        paths.append(ckpt.source.fetch(ckpt.mimi_config_name))
    return paths


def cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def repo_in_cache(repo: str) -> bool:
    """True when any snapshot of ``repo`` is in the local Hugging Face cache."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        return any(r.repo_id == repo for r in scan_cache_dir().repos)
    except CacheNotFound:
        return False


def download_repo(repo: str, hint_name: str | None = None) -> Path:
    """Fetch a whole repository (e.g. the voices repo) into the cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub import errors as hf_errors

    try:
        return Path(snapshot_download(repo))
    except hf_errors.LocalEntryNotFoundError:
        raise ModelLoadError(f"{repo} is not in the local cache and the Hub is not reachable: "
                             f"{_download_hint(hint_name or repo)}") from None
    except (OSError, hf_errors.HfHubHTTPError) as exc:
        raise ModelLoadError(f"cannot download {repo}: {exc.__class__.__name__}") from None
