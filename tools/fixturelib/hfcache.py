"""Lay a repo folder out as a Hugging Face hub cache entry, so that offline
``hf_hub_download(repo_id, filename)`` finds it.

Layout (as ``huggingface_hub`` writes it)::

    <cache>/models--<owner>--<name>/
        blobs/<etag>                      file contents (sha256 for LFS-like files, git sha1 else)
        refs/main                         the commit hash (no newline)
        snapshots/<commit>/<path>         relative symlinks into blobs/

The commit hash is derived from the file contents, so it is stable across runs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".model", ".wav")


def _etag(path: Path) -> str:
    """What the Hub uses as a blob name: sha256 for LFS files, the git blob sha1 otherwise."""
    data = path.read_bytes()
    if path.suffix in LFS_SUFFIXES:
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def repo_files(repo_dir: Path) -> list[Path]:
    """Every file of a repo folder, relative to it, sorted."""
    return sorted(p.relative_to(repo_dir) for p in repo_dir.rglob("*") if p.is_file())


def install_into_hf_cache(repo_dir: Path | str, cache_dir: Path | str, repo_id: str) -> Path:
    """Install ``repo_dir`` as model ``repo_id`` in the hub cache ``cache_dir``; returns the snapshot dir.

    Idempotent: installing the same content again leaves the cache unchanged.
    """
    repo_dir, cache_dir = Path(repo_dir), Path(cache_dir)
    owner, name = repo_id.split("/")
    root = cache_dir / f"models--{owner}--{name}"
    files = {rel: _etag(repo_dir / rel) for rel in repo_files(repo_dir)}
    listing = "".join(f"{rel.as_posix()}\t{etag}\n" for rel, etag in files.items())
    commit = hashlib.sha1(listing.encode("utf-8")).hexdigest()
    snapshot = root / "snapshots" / commit
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    for rel, etag in files.items():
        blob = root / "blobs" / etag
        if not blob.exists():
            tmp = blob.with_name(f"{etag}.incomplete.{os.getpid()}")
            shutil.copyfile(repo_dir / rel, tmp)
            os.replace(tmp, blob)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return snapshot
