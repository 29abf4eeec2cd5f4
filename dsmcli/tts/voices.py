"""Voices: what ``--voice`` means for a TTS model, and the conditioning built from it (FORMAT.md §6.7-6.8).

Two kinds of models:

* **embedding** models (tts-1.6b: a ``speaker_wavs`` conditioner). A voice is a precomputed embedding
  ``speaker_wavs [1, D, T]`` named ``<voice>.wav.<sig>@<epoch>.safetensors`` after the model's ``model_id``.
  ``--voice`` is a path inside the voices repo (``expresso/ex03-ex01_happy_001_channel1_334s.wav``), a local
  ``.safetensors`` embedding, a local ``.wav`` with its embedding beside it, or ``hf://owner/repo/path``.
* **audio-prefix** models (tts-0.75b): a voice is any audio file (local, ``file://…``, or a path in the voices
  repo); the caller Mimi-encodes it and builds the prefix with :func:`build_audio_prefix`.
"""

from __future__ import annotations

import enum
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch

from dsmcli.errors import InputError, ModelLoadError
from dsmcli.hub.checkpoint import Checkpoint
from dsmcli.hub.files import ModelSource, NotCachedError, resolve_source
from dsmcli.hub.registry import VOICES_ROLE, load_registry
from dsmcli.hub.task_config import DEFAULT_MAX_SPEAKERS
from dsmcli.tts.tokens import TtsTokenIds

VOICE_CONDITIONER = "speaker_wavs"  # conditioner name and tensor key in voice files
PREFIX_TRIM_FRAMES = 2  # get_prefix drops the last 2 Mimi frames of an audio-prefix voice
EMBEDDING_EXT = ".safetensors"
AUDIO_EXTS = (".wav", ".mp3", ".flac", ".ogg", ".opus", ".m4a")
FILE_SCHEME = "file://"
HF_SCHEME = "hf://"


class VoiceKind(str, enum.Enum):
    EMBEDDING = "embedding"
    AUDIO_PREFIX = "audio_prefix"


class VoiceMismatchWarning(UserWarning):
    """A voice embedding was computed for another model signature/epoch."""


@dataclass(frozen=True)
class VoiceSetup:
    """How one model takes voices. ``suffix``: ``.<sig>@<epoch>.safetensors`` (embedding models) or ``""``."""

    kind: VoiceKind
    voices: ModelSource
    suffix: str = ""
    sig: str | None = None
    epoch: str | None = None
    embedding_dim: int | None = None
    max_speakers: int = DEFAULT_MAX_SPEAKERS
    model_name: str = ""

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, voices: str | Path | ModelSource | None = None) -> VoiceSetup:
        """The setup of a TTS checkpoint; ``voices`` overrides its voices repo (registry name, repo id or dir)."""
        source = voices if isinstance(voices, ModelSource) else default_voices_source(checkpoint, voices)
        max_speakers = checkpoint.tts.max_speakers
        conditioner = conditioner_config(checkpoint.lm_kwargs)
        if conditioner is None:
            return cls(VoiceKind.AUDIO_PREFIX, source, max_speakers=max_speakers, model_name=checkpoint.name)
        sig, epoch = checkpoint.model_id.get("sig"), checkpoint.model_id.get("epoch")
        if sig is None or epoch is None:
            raise ModelLoadError(f"{checkpoint.name}: config.json has no model_id sig/epoch to name its voices")
        dim = conditioner.get(conditioner.get("type", ""), {}).get("dim")
        return cls(VoiceKind.EMBEDDING, source, suffix=f".{sig}@{epoch}{EMBEDDING_EXT}", sig=str(sig),
                   epoch=str(epoch), embedding_dim=None if dim is None else int(dim), max_speakers=max_speakers,
                   model_name=checkpoint.name)

    @property
    def encodes_audio(self) -> bool:
        """Whether a voice is audio that Mimi encodes (a prefix). Embedding voices never encode anything, so such a
        model's Mimi needs no encoder (``Mimi.drop_encoder``: ~half of Mimi's memory)."""
        return self.kind is VoiceKind.AUDIO_PREFIX

    @property
    def multi_speaker(self) -> bool:
        """Whether scripts get speaker tokens (the reference's ``TTSModel.multi_speaker``)."""
        return self.kind is VoiceKind.EMBEDDING


def default_voices_source(checkpoint: Checkpoint, override: str | Path | None = None) -> ModelSource:
    """The override, else the registry's voices repo for this model, else the first ``voices`` entry."""
    return voices_source_for(checkpoint.source.name, override)


def voices_source_for(model: str, override: str | Path | None = None) -> ModelSource:
    """:func:`default_voices_source` from the model's name alone (its config need not be on disk)."""
    if override is not None:
        return resolve_source(override)
    registry = load_registry()
    entry = registry.get(model)
    if entry is not None and entry.voices:
        return resolve_source(entry.voices)
    for name, candidate in registry.items():
        if candidate.role == VOICES_ROLE:
            return resolve_source(name)
    raise ModelLoadError("weights.toml names no voices repository")


@dataclass(frozen=True)
class ResolvedVoice:
    """A voice on disk: an embedding (``.safetensors``) or an audio file for a prefix model."""

    name: str
    kind: VoiceKind
    path: Path


def resolve_voice(voice: str, setup: VoiceSetup) -> ResolvedVoice:
    """``--voice`` → a file on disk (fetched from the voices repo if needed). Raises InputError."""
    if voice.startswith(HF_SCHEME):
        parts = voice.removeprefix(HF_SCHEME).split("/")
        if len(parts) < 3 or not all(parts[:2]):
            raise InputError(f"voice {voice}: write Hub voices as {HF_SCHEME}owner/repo/path")
        repo = "/".join(parts[:2])
        return _from_repo(voice, "/".join(parts[2:]), setup, ModelSource(name=repo, repo=repo))
    local = Path(voice.removeprefix(FILE_SCHEME)).expanduser()
    if voice.startswith(FILE_SCHEME) or local.is_file():
        return _from_local(voice, local, setup)
    return _from_repo(voice, voice, setup, setup.voices)


def _bare_audio_error(voice: str, setup: VoiceSetup) -> InputError:
    return InputError(
        f"voice {voice}: {setup.model_name or 'this model'} needs a precomputed voice embedding "
        f"({Path(voice).name}{setup.suffix}) and none was found; pick a voice from `dsm voices`, pass a "
        f"{EMBEDDING_EXT} embedding, or use the model tts-0.75b-en-public, which clones a voice from any audio")


def _from_local(voice: str, path: Path, setup: VoiceSetup) -> ResolvedVoice:
    if not path.is_file():
        raise InputError(f"voice file {path} does not exist")
    is_embedding = path.suffix == EMBEDDING_EXT
    if setup.kind is VoiceKind.AUDIO_PREFIX:
        if is_embedding:
            raise InputError(f"voice {voice}: {setup.model_name or 'this model'} takes an audio file as voice "
                             f"(it is conditioned on an audio prefix), not an embedding")
        return ResolvedVoice(voice, VoiceKind.AUDIO_PREFIX, path)
    if is_embedding:
        return ResolvedVoice(voice, VoiceKind.EMBEDDING, path)
    beside = path.with_name(path.name + setup.suffix)
    if beside.is_file():
        return ResolvedVoice(voice, VoiceKind.EMBEDDING, beside)
    raise _bare_audio_error(voice, setup)


def _check_repo_path(voice: str, path: str) -> None:
    parts = path.replace("\\", "/").split("/")
    if not path or PurePosixPath(path).is_absolute() or PureWindowsPath(path).is_absolute() \
            or PureWindowsPath(path).drive or ".." in parts:
        if Path(voice).is_absolute():
            raise InputError(f"voice file {voice} does not exist")
        raise InputError(f"voice {voice}: a voices-repo path must be relative and stay inside the repo (no '..')")


def _from_repo(voice: str, path: str, setup: VoiceSetup, source: ModelSource) -> ResolvedVoice:
    _check_repo_path(voice, path)
    if setup.kind is VoiceKind.AUDIO_PREFIX:
        return ResolvedVoice(voice, VoiceKind.AUDIO_PREFIX, _fetch_voice(voice, path, source))
    if path.endswith(EMBEDDING_EXT):
        return ResolvedVoice(voice, VoiceKind.EMBEDDING, _fetch_voice(voice, path, source))
    return ResolvedVoice(voice, VoiceKind.EMBEDDING, _fetch_voice(voice, path + setup.suffix, source))


def _fetch_voice(voice: str, filename: str, source: ModelSource) -> Path:
    """Fetch a voice file; a file the repo (or its offline copy) does not have is an unknown voice."""
    if source.local_dir is not None:
        path = source.local_dir / filename
        if not path.is_file():
            raise InputError(f"unknown voice {voice}: no such local file, and no {filename} in {source.local_dir}")
        return path
    try:
        return source.fetch(filename)
    except ModelLoadError as exc:
        if _is_missing_entry(exc, source):
            raise InputError(f"unknown voice {voice}: no such local file, and {source.repo} has no {filename} "
                             f"(or it is not in the offline cache); `dsm voices` lists the voices") from None
        raise


def _is_missing_entry(exc: ModelLoadError, source: ModelSource) -> bool:
    """True when the Hub answered "no such file", or the repo is cached but not this file and the Hub is not
    available (offline, unreachable): then the voice is unknown, not the network broken."""
    from huggingface_hub.errors import EntryNotFoundError

    if isinstance(exc, NotCachedError):
        return any(_snapshot_dirs(source))
    return isinstance(exc.__context__, EntryNotFoundError)  # hub.py raises `from None`: the cause is the context


@dataclass(frozen=True)
class VoiceEmbedding:
    """``tensor``: ``speaker_wavs [1, D, T]`` float32; ``sig``/``epoch``: the model it was computed for."""

    tensor: torch.Tensor
    sig: str | None = None
    epoch: str | None = None


def load_voice_embedding(path: Path, setup: VoiceSetup | None = None) -> VoiceEmbedding:
    """Read a voice embedding file; warns (VoiceMismatchWarning) when its sig/epoch differ from the model's."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata: Mapping[str, str] = handle.metadata() or {}
            if VOICE_CONDITIONER not in handle.keys():
                raise InputError(f"voice file {path} has no {VOICE_CONDITIONER} tensor")
            tensor = handle.get_tensor(VOICE_CONDITIONER).float()
    except (OSError, SafetensorError) as exc:
        raise InputError(f"cannot read voice file {path}: {exc}") from None
    if tensor.dim() != 3 or tensor.shape[0] != 1:
        raise InputError(f"voice file {path}: {VOICE_CONDITIONER} has shape {tuple(tensor.shape)}, expected [1, D, T]")
    embedding = VoiceEmbedding(tensor, metadata.get("sig"), metadata.get("epoch"))
    if setup is not None:
        _check_embedding(path, embedding, setup)
    return embedding


def _check_embedding(path: Path, embedding: VoiceEmbedding, setup: VoiceSetup) -> None:
    dim = embedding.tensor.shape[1]
    if setup.embedding_dim is not None and dim != setup.embedding_dim:
        raise InputError(f"voice file {path} has dimension {dim}, the model expects {setup.embedding_dim}")
    found = (embedding.sig, embedding.epoch)
    if None not in found and found != (setup.sig, setup.epoch):
        warnings.warn(f"voice {path.name} was computed for model {found[0]}@{found[1]}, "
                      f"this model is {setup.sig}@{setup.epoch}", VoiceMismatchWarning, stacklevel=3)


@dataclass(frozen=True)
class SpeakerCondition:
    """Cross-attention source of the ``speaker_wavs`` conditioner.

    ``tensor``: ``[1, max_speakers * T, D]`` float32, slot i (rows ``i*T … (i+1)*T - 1``) = voice i as time × dim,
    zeros elsewhere; ``mask``: ``[1, max_speakers * T]`` bool, True on the filled slots.
    """

    tensor: torch.Tensor
    mask: torch.Tensor


def build_speaker_condition(voices: Sequence[VoiceEmbedding | torch.Tensor],
                            max_speakers: int = DEFAULT_MAX_SPEAKERS) -> SpeakerCondition:
    """Voices (MAIN first) → the conditioning input, as ``make_condition_attributes`` in the reference."""
    tensors = [v.tensor if isinstance(v, VoiceEmbedding) else v for v in voices]
    if not tensors:
        raise ValueError("at least one voice is needed")
    if len(tensors) > max_speakers:
        raise InputError(f"{len(tensors)} voices given, the model takes at most {max_speakers}")
    _, dim, frames = tensors[0].shape
    slots = torch.zeros(1, max_speakers, frames, dim)
    mask = torch.zeros(1, max_speakers, frames, dtype=torch.bool)
    for index, tensor in enumerate(tensors):
        if tensor.shape != tensors[0].shape:
            raise InputError(f"voice {index + 1} has shape {tuple(tensor.shape)}, voice 1 {tuple(tensors[0].shape)}")
        slots[:, index] = tensor.transpose(1, 2)
        mask[:, index] = True
    return SpeakerCondition(slots.view(1, -1, dim), mask.view(1, -1))


def build_audio_prefix(codes: torch.Tensor, token_ids: TtsTokenIds) -> torch.Tensor:
    """Mimi codes of a voice ``[K, T]`` → the prefix ``[1 + K, T - 2]``: text row of ``zero``, last 2 frames dropped.

    The engine forces the text to ``zero`` for the prefix's ``T - 2`` steps (``prefix_steps`` of the state
    machine) and overrides audio codebook q with row q+1 shifted by its delay + the audio delay (FORMAT.md §6.8).
    """
    if codes.dim() != 2 or codes.shape[1] <= PREFIX_TRIM_FRAMES:
        raise InputError(f"voice audio too short for a prefix: {tuple(codes.shape)} Mimi frames")
    kept = codes[:, :-PREFIX_TRIM_FRAMES]
    return torch.cat([torch.full_like(kept[:1], token_ids.zero), kept], dim=0)


@dataclass(frozen=True)
class VoiceInfo:
    """A voice found on disk. ``name``: what to pass to ``--voice``; ``model_tag``: ``sig@epoch`` or None (audio);
    ``origin``: the Hub repo id or the local folder it was found in."""

    name: str
    kind: VoiceKind
    path: Path
    origin: str
    model_tag: str | None = None


def _snapshot_dirs(source: ModelSource) -> list[Path]:
    """Local roots of a voices source: the dir itself, or the cached snapshots of a Hub repo."""
    if source.local_dir is not None:
        return [source.local_dir]
    from huggingface_hub import constants

    snapshots = Path(constants.HF_HUB_CACHE) / f"models--{str(source.repo).replace('/', '--')}" / "snapshots"
    return sorted(p for p in snapshots.iterdir() if p.is_dir()) if snapshots.is_dir() else []


def _voice_info(rel: str, path: Path, origin: str) -> VoiceInfo | None:
    if rel.endswith(EMBEDDING_EXT):
        stem, _, tag = rel.removesuffix(EMBEDDING_EXT).rpartition(".")
        if stem and "@" in tag:
            return VoiceInfo(stem, VoiceKind.EMBEDDING, path, origin, tag)
        return None
    if rel.lower().endswith(AUDIO_EXTS):
        return VoiceInfo(rel, VoiceKind.AUDIO_PREFIX, path, origin)
    return None


def list_voices(sources: Sequence[ModelSource], model_tag: str | None = None) -> list[VoiceInfo]:
    """Voices available without the network: cached voices-repo snapshots and local dirs, sorted by name.

    ``model_tag`` (``sig@epoch``) keeps only the embeddings of that model (audio files are always listed).
    """
    found: dict[tuple[str, str | None], VoiceInfo] = {}
    for source in sources:
        origin = source.repo if source.local_dir is None else str(source.local_dir)
        for root in _snapshot_dirs(source):
            for path in sorted(root.rglob("*")):
                info = _voice_info(path.relative_to(root).as_posix(), path, str(origin))
                if info is None or not path.is_file():
                    continue
                if model_tag is None or info.model_tag in (None, model_tag):
                    found.setdefault((info.name, info.model_tag), info)
    return sorted(found.values(), key=lambda info: (info.name, info.model_tag or ""))


def voice_model_tag(setup: VoiceSetup) -> str | None:
    """``sig@epoch`` of an embedding model (the filter for :func:`list_voices`), None for prefix models."""
    return None if setup.kind is VoiceKind.AUDIO_PREFIX else f"{setup.sig}@{setup.epoch}"


def conditioner_config(lm_kwargs: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ``speaker_wavs`` entry of config.json's conditioners, None for audio-prefix models."""
    return (lm_kwargs.get("conditioners") or {}).get(VOICE_CONDITIONER)
