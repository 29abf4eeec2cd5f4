"""Checkpoint → modules: the LM, Mimi and the SentencePiece tokenizer, each read from the files a checkpoint names.

Every loader takes a :class:`~dsmcli.hub.checkpoint.Checkpoint` already read (so a command resolves and validates
its model once) or, for convenience, anything :func:`~dsmcli.hub.checkpoint.load_checkpoint` takes. The modules are
built by the engine and the codec from state dicts (``LM.from_state``, ``Mimi.from_state``): they never see a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dsmcli.codec import CodecOptions, Mimi, MimiConfig
from dsmcli.engine.lm import LM
from dsmcli.engine.quantize import QuantMethod
from dsmcli.errors import ModelLoadError
from dsmcli.hub.checkpoint import Checkpoint, load_checkpoint
from dsmcli.hub.weights import read_safetensors
from dsmcli.kernels import KernelChoice

WEIGHT_SUFFIXES = (".safetensors", ".sft")
ModelRef = str | Path | Checkpoint  # a checkpoint already read, or a registry name / Hub repo id / local dir


def as_checkpoint(model: ModelRef) -> Checkpoint:
    """``model`` itself when it is a Checkpoint, else the checkpoint it names (config.json read once here)."""
    return model if isinstance(model, Checkpoint) else load_checkpoint(model)


def load_lm(model: ModelRef, device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16,
            quantize: QuantMethod | str = QuantMethod.NONE, kernels: KernelChoice | str = KernelChoice.AUTO) -> LM:
    """The checkpoint's LM (architecture from its parsed ``lm_config``); ``quantize``, ``kernels`` (of the
    quantized weights' linears): see ``LM.from_state``."""
    checkpoint = as_checkpoint(model)
    state = read_safetensors(checkpoint.lm_path, device)
    return LM.from_state(checkpoint.lm_config, state, dtype, source=f"{checkpoint.name}/{checkpoint.lm_name}",
                         quantize=quantize, kernels=kernels)


def load_mimi(model: ModelRef, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
              num_codebooks: int | None = None, options: CodecOptions | None = None) -> Mimi:
    """A released Mimi: a bare ``.safetensors`` file (released sizes), or a checkpoint's ``mimi_name`` file with
    its optional ``mimi_config_name`` override. ``num_codebooks`` defaults to all; ``options``: how it runs
    (:class:`~dsmcli.codec.CodecOptions`: the native kernels)."""
    path, config = _mimi_file(model)
    try:
        config.codebooks(num_codebooks)  # checked before the file is read
        return Mimi.from_state(read_safetensors(path, device), config, dtype, source=path.name,
                               num_codebooks=num_codebooks, options=options)
    except ValueError as exc:
        raise ModelLoadError(f"{path.name}: {exc}") from None


def _mimi_file(model: ModelRef) -> tuple[Path, MimiConfig]:
    if not isinstance(model, Checkpoint):
        path = Path(model).expanduser()
        if path.suffix in WEIGHT_SUFFIXES:
            if not path.is_file():
                raise ModelLoadError(f"Mimi weights not found: {path}")
            return path, MimiConfig()
    checkpoint = as_checkpoint(model)
    return checkpoint.mimi_path, mimi_config(checkpoint)


def mimi_config(checkpoint: Checkpoint) -> MimiConfig:
    """The checkpoint's Mimi hyper-parameters: its override file if it names one, else the released sizes."""
    raw = checkpoint.mimi_config
    return MimiConfig() if raw is None else MimiConfig.from_dict(raw)


def load_tokenizer(model: ModelRef | Path) -> Any:
    """The checkpoint's SentencePiece model (``sentencepiece.SentencePieceProcessor``), or one from a ``.model``
    file path; the one loader the STT and TTS bundles use."""
    import sentencepiece

    path = model if isinstance(model, Path) and model.suffix == ".model" else as_checkpoint(model).tokenizer_path
    try:
        return sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as exc:
        raise ModelLoadError(f"{path.name} is not a SentencePiece model: {exc}") from None

