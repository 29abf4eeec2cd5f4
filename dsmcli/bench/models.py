"""The models ``dsm bench`` times: a released checkpoint, or its exact architecture with random weights.

:func:`load_bench_model` returns a :class:`BenchModel` (LM + Mimi + the task's time grid). With
``random_weights`` nothing is downloaded: a registry name takes its architecture from
:mod:`dsmcli.bench.architectures`, a local directory from its ``config.json`` (and its Mimi override, if any); the
modules are built on the meta device, allocated on the target device and filled with random values. Random
weights cost exactly what real ones cost per step, but their tokens mean nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum
from fractions import Fraction
from pathlib import Path

import torch
from torch import nn

from dsmcli.bench.architectures import ARCHITECTURES, released_config
from dsmcli.codec import CodecOptions, Mimi
from dsmcli.codec.config import MimiConfig
from dsmcli.codec.quantizer import ResidualVQ
from dsmcli.engine import LM, LMConfig
from dsmcli.engine.quantize import QuantizeReport, QuantMethod, WeightQuantizer, quantization_targets
from dsmcli.errors import ModelLoadError
from dsmcli.hub.checkpoint import Checkpoint, load_checkpoint
from dsmcli.hub.files import ModelSource, NotCachedError
from dsmcli.hub.loaders import load_lm, load_mimi, mimi_config
from dsmcli.kernels import KernelChoice
from dsmcli.stt import SttTiming
from dsmcli.tts.voices import VoiceSetup

NORM_GAIN_NAMES = ("alpha",)  # RMSNorm gains ([1, 1, D]); other 1-D weights (LayerNorm, layer scale) too
CODEBOOK_CENTROIDS = "embedding_sum"  # Mimi codebook buffers (FORMAT.md §2.7): random centroids,
CODEBOOK_ONES = ("cluster_usage", "_initialized")  # usage 1 (centroid = embedding_sum), initialised


class ModelKind(str, Enum):
    STT = "stt"
    TTS = "tts"


@dataclass
class BenchModel:
    """A loaded (or randomly built) model: ``lm``, ``mimi`` (all the codebooks the task uses), the checkpoint
    config it came from, and what quantization did (None: not quantized)."""

    name: str
    kind: ModelKind
    checkpoint: Checkpoint
    lm: LM
    mimi: Mimi
    random_weights: bool
    quantization: QuantizeReport | None
    load_seconds: float = 0.0
    kernels: KernelChoice = KernelChoice.AUTO  # the native CPU kernels it was built with and runs under

    @property
    def frame_rate(self) -> Fraction:
        return self.mimi.frame_rate

    @property
    def stt_timing(self) -> SttTiming:
        return SttTiming.from_config(self.checkpoint.stt)

    @property
    def tts_delay_steps(self) -> int:
        """Steps the audio lags the text (``int(audio_delay * frame_rate)``, as ``TtsModel``)."""
        return self.checkpoint.tts.delay_steps(self.frame_rate, self.name)

    @property
    def params(self) -> int:
        """Parameters of the LM as built (quantized weights counted as their float originals)."""
        counted = sum(p.numel() for p in self.lm.parameters())
        return counted + (self.quantization.params if self.quantization is not None else 0)


def bench_checkpoint(model: str, random_weights: bool) -> Checkpoint:
    """The checkpoint config. Random weights of a registry name use the built-in architecture (no download);
    any other model's architecture comes from its config.json (the only file fetched for random weights)."""
    if random_weights and model in ARCHITECTURES and not Path(model).expanduser().is_dir():
        return Checkpoint.from_config(ModelSource(name=model), released_config(model))
    return load_checkpoint(model)


def _kind(checkpoint: Checkpoint) -> ModelKind:
    try:
        return ModelKind(checkpoint.model_type)
    except ValueError:
        raise ModelLoadError(f"{checkpoint.name} is a {checkpoint.model_type!r} model: dsm bench times stt "
                             "and tts models") from None


def _fill(name: str, param: torch.Tensor, generator: torch.Generator, fan_in_dims: int) -> None:
    """One parameter as :func:`fill_random` fills it."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "bias":
        param.zero_()
    elif leaf in NORM_GAIN_NAMES or param.dim() == 1:
        param.fill_(1.0)
    else:
        fan_in = max(1, param.shape[-fan_in_dims:].numel())
        param.normal_(0.0, fan_in ** -0.5, generator=generator)


def fill_random(module: nn.Module, generator: torch.Generator, fan_in_dims: int) -> None:
    """Biases 0, norm gains and other 1-D weights 1, everything else N(0, 1/fan_in) where fan_in is the product
    of the last ``fan_in_dims`` dims (1 for linear ``[..., out, in]`` layouts, 2 for conv ``[out, in, k]``)."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            _fill(name, param, generator, fan_in_dims)


def random_lm(config: LMConfig, device: torch.device, dtype: torch.dtype, seed: int,
              quantize: QuantMethod = QuantMethod.NONE, kernels: KernelChoice = KernelChoice.AUTO) -> LM:
    """An LM of ``config`` with random weights, in eval mode without gradients (conditioners stay float32).

    With ``quantize`` the parameters are drawn one by one (the same values, in the same order) and each linear
    weight is quantized as soon as it is drawn: the float model never exists (``lm.quantization`` says what
    was done)."""
    if quantize is QuantMethod.NONE:
        lm = LM(config, device="meta", dtype=dtype).to_empty(device=device)
        fill_random(lm, torch.Generator(device=device).manual_seed(seed), fan_in_dims=1)
        return lm.eval().requires_grad_(False)
    lm = LM(config, device="meta", dtype=dtype)
    if any(True for _ in lm.buffers()):
        raise ValueError("random_lm cannot quantize while building a model with buffers")
    quantizer = WeightQuantizer(quantize, kernels=kernels)
    targets = quantization_targets(lm)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in list(lm.named_parameters()):
            value = torch.empty_like(param, device=device)
            _fill(name, value, generator, fan_in_dims=1)
            module_name, _, attribute = name.rpartition(".")
            if name in targets:
                quantizer.replace(*targets[name], value)
            else:
                lm.get_submodule(module_name)._parameters[attribute] = nn.Parameter(value, requires_grad=False)
            del value
    lm.quantization = quantizer.report()
    return lm.eval().requires_grad_(False)


def random_mimi(config: MimiConfig, device: torch.device, seed: int, num_codebooks: int | None = None,
                options: CodecOptions | None = None) -> Mimi:
    """A Mimi of ``config`` with random weights and random (non-degenerate) codebooks, float32."""
    with torch.device("meta"):
        mimi = Mimi(config, num_codebooks, options)
    mimi = mimi.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    fill_random(mimi, generator, fan_in_dims=2)
    with torch.no_grad():
        for name, buffer in mimi.named_buffers():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == CODEBOOK_CENTROIDS:
                buffer.normal_(generator=generator)
            elif leaf in CODEBOOK_ONES:
                buffer.fill_(1.0)
        for module in mimi.modules():
            if isinstance(module, ResidualVQ):
                module.refresh()
    return mimi.eval().requires_grad_(False)


def load_bench_model(model: str, device: torch.device, dtype: torch.dtype, *, random_weights: bool = False,
                     quantize: QuantMethod = QuantMethod.NONE, seed: int = 0,
                     kernels: KernelChoice = KernelChoice.AUTO, encodes_audio: bool = True) -> BenchModel:
    """Load ``model`` (registry name, Hub repo id, local dir) or build it with random weights; then quantize.

    Mimi comes first. Unless ``encodes_audio`` (a codec-encode path is to be timed), a TTS model with embedding
    voices never encodes audio, so its Mimi loses its encoder at once, as `dsm speak` loads it: the LM's load then
    peaks over the decode-only Mimi, and the peak memory reported is the command's."""
    started = time.perf_counter()
    try:
        checkpoint = bench_checkpoint(model, random_weights)
        kind = _kind(checkpoint)
        codebooks = checkpoint.lm_config.n_q if kind is ModelKind.STT else checkpoint.lm_config.dep_q
        if random_weights:
            mimi = random_mimi(mimi_config(checkpoint), device, seed + 1, codebooks, CodecOptions(kernels))
        else:
            mimi = load_mimi(checkpoint, device=device, num_codebooks=codebooks, options=CodecOptions(kernels))
        if kind is ModelKind.TTS and not encodes_audio and not VoiceSetup.from_checkpoint(checkpoint).encodes_audio:
            mimi.drop_encoder()
        if random_weights:
            lm = random_lm(checkpoint.lm_config, device, dtype, seed, quantize, kernels)
        else:
            lm = load_lm(checkpoint, device=device, dtype=dtype, quantize=quantize, kernels=kernels)
    except NotCachedError as exc:
        if random_weights or model not in ARCHITECTURES:
            raise
        raise ModelLoadError(f"{exc.what}: time its architecture without a download with `dsm bench --random-weights "
                             f"--model {model}`, or run `dsm download {model}` where the Hub is reachable") from None
    return BenchModel(checkpoint.name, kind, checkpoint, lm, mimi, random_weights, lm.quantization,
                      time.perf_counter() - started, kernels)
