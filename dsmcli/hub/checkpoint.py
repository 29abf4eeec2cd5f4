"""A released checkpoint's ``config.json``, split as the reference splits it (FORMAT.md §1.2), read once per load."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsmcli.errors import ModelLoadError
from dsmcli.hub.files import CONFIG_NAME, ModelSource, resolve_source
from dsmcli.hub.task_config import GenerationConfig, SttConfig, TtsConfig

if TYPE_CHECKING:
    from dsmcli.engine.config import LMConfig

# Defaults of the released config.json schema (FORMAT.md §1.2).
DEFAULT_LM_NAME = "model.safetensors"
DEFAULT_MIMI_NAME = "tokenizer-e351c8d8-checkpoint125.safetensors"
DEFAULT_TOKENIZER_NAME = "tokenizer_spm_32k_3.model"


@dataclass(frozen=True)
class Checkpoint:
    """A released DSM checkpoint: its ``config.json`` split as the reference does (FORMAT.md §1.2).

    ``lm_kwargs`` holds the architecture keys left after popping the file names and task configs (parsed by
    :attr:`lm_config`); the task configs are parsed here, once (:mod:`dsmcli.hub.task_config`).
    Files are fetched lazily, so loading only Mimi downloads only Mimi.
    """

    source: ModelSource
    raw_config: dict[str, Any]
    lm_name: str = DEFAULT_LM_NAME
    mimi_name: str = DEFAULT_MIMI_NAME
    mimi_config_name: str | None = None
    tokenizer_name: str = DEFAULT_TOKENIZER_NAME
    model_type: str = "moshi"
    generation: GenerationConfig = GenerationConfig()  # lm_gen_config
    tts: TtsConfig = TtsConfig()  # tts_config
    stt: SttConfig = SttConfig()  # stt_config
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
            generation=GenerationConfig.from_dict(rest.pop("lm_gen_config", {}), source.name),
            tts=TtsConfig.from_dict(rest.pop("tts_config", {}), source.name),
            stt=SttConfig.from_dict(rest.pop("stt_config", {}), source.name),
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
    def lm_config(self) -> LMConfig:
        """The LM architecture (``lm_kwargs`` parsed and validated once; a ModelLoadError names a bad key)."""
        from dsmcli.engine.config import LMConfig  # torch: only when a model is really loaded

        return LMConfig.from_dict(self.lm_kwargs)

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
