"""Model sources and their files: a local directory or a Hub repo, fetched through the Hugging Face cache.

A model argument is one of:
  * a registry name from weights.toml (``stt-1b-en_fr``, :mod:`dsmcli.hub.registry`),
  * a Hugging Face Hub repo id (``kyutai/stt-1b-en_fr``),
  * a local directory laid out like a Hub repo (``config.json`` + the files it names).

Files come from ``huggingface_hub`` (cache under ``HF_HOME`` / ``HF_HUB_CACHE``;
``HF_HUB_OFFLINE=1`` is honoured). Nothing here parses a config or builds a model.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dsmcli.errors import ModelLoadError
from dsmcli.hub import registry

CONFIG_NAME = "config.json"


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
    entries = registry.load_registry()
    if text in entries:
        return ModelSource(name=text, repo=entries[text].repo)
    repo, _, revision = text.partition("@")
    if repo.count("/") == 1 and not path.exists() and not text.startswith((".", "/", "~")):
        return ModelSource(name=text, repo=repo, revision=revision or None)
    if path.exists():
        raise ModelLoadError(f"{text} is not a model directory (expected a folder with {CONFIG_NAME})")
    known = ", ".join(sorted(entries))
    raise ModelLoadError(f"unknown model {text!r}: use one of {known}, a Hub repo id, or a local directory")


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
