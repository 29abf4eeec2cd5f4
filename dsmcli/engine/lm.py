"""The DSM language model: the network only (FORMAT.md §3). The step loop is in :mod:`dsmcli.engine.stream`.

Per step the backbone reads one token per stream (``[B, n_q + 1]``: text then audio codebooks), sums their
embeddings (audio ``emb.0 .. emb.{n_q-1}`` first, then text, then the ``sum`` condition), runs the transformer
and ``out_norm``; the text head, the extra heads and the depformer read that output. Conditioners run in
float32, everything else in the model dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsmcli.engine.checkpoint import file_to_module_state
from dsmcli.engine.conditioning import ConditionInputs, ConditionProvider, ConditionTensors
from dsmcli.engine.config import ZERO_TOKEN_ID, LMConfig
from dsmcli.engine.depformer import Depformer
from dsmcli.engine.embeddings import TokenEmbedding
from dsmcli.engine.quantize import (
    QuantizeReport,
    QuantMethod,
    WeightQuantizer,
    quantization_targets,
    quantized_state,
)
from dsmcli.errors import ModelLoadError
from dsmcli.kernels import KernelChoice
from dsmcli.engine.transformer import Transformer, TransformerState
from dsmcli.nn import make_norm
from dsmcli.nn.linear import linear
from dsmcli.nn.state import assign_state, cast_floats

FLOAT32_PREFIXES = ("condition_provider.", "fuser.")  # file tensors kept in float32 whatever the model dtype
FLOAT32_MODULES = ("conditioning.", "fuser.")  # the same tensors under their module names


@dataclass(frozen=True)
class ModelStep:
    """Outputs of :meth:`LM.step` for ``B`` rows: hidden ``[B, 1, D]`` (the depformer's input), text_logits
    ``[B, 1, text_card_out]`` (model dtype), extra_probs ``[B, 1, heads, classes]`` or None."""

    hidden: Tensor
    text_logits: Tensor
    extra_probs: Tensor | None


class LM(nn.Module):
    """A DSM language model built from an :class:`LMConfig` (weights as released, see
    :mod:`dsmcli.engine.checkpoint` for the two renamed groups)."""

    def __init__(self, config: LMConfig, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.config = config
        dim = config.dim
        self.emb = nn.ModuleList([TokenEmbedding(config.card + 1, dim, device=device, dtype=dtype)
                                  for _ in range(config.n_q)])
        self.text_emb = TokenEmbedding(config.text_vocab_in, dim, demux=config.demux_second_stream,
                                       device=device, dtype=dtype)
        self.transformer = Transformer(config.transformer, device, dtype)
        self.out_norm = make_norm(config.transformer.norm, dim, device=device, dtype=dtype)
        self.text_linear = nn.Linear(dim, config.text_card_out, bias=config.bias_proj, device=device, dtype=dtype)
        self.extra_heads = nn.ModuleList([nn.Linear(dim, config.extra_heads_dim, bias=False, device=device,
                                                    dtype=dtype) for _ in range(config.extra_heads_num_heads)])
        self.depformer = Depformer(config, device, dtype) if config.depformer is not None else None
        self.conditioning = (ConditionProvider(config.conditioners, config.fuser, dim, device)
                             if config.conditioners else None)
        self.quantization: QuantizeReport | None = None  # what quantization did (None: a float model)

    # ------------------------------------------------------------------------- building from a state dict
    @classmethod
    def from_state(cls, config: LMConfig, state: dict[str, Tensor], dtype: torch.dtype = torch.bfloat16,
                   source: str = "LM weights", quantize: QuantMethod | str = QuantMethod.NONE,
                   kernels: KernelChoice | str = KernelChoice.AUTO) -> LM:
        """Build on the meta device and assign ``state`` (released names, either attention layout); floating
        tensors are cast to ``dtype`` (conditioners to float32). Tensors already of the right dtype are shared.
        ``quantize`` (int8, int4): the linear weights are quantized one by one as they are cast, so no float copy
        of them is ever made (:mod:`dsmcli.engine.quantize`; what was done is in :attr:`quantization`), and
        ``kernels`` is the :class:`~dsmcli.kernels.KernelChoice` of their native linears. The model is returned
        in eval mode without gradients (inference only)."""
        if QuantMethod(quantize) is not QuantMethod.NONE:
            module_state = file_to_module_state(state, drop_depformer=config.depformer is None)
            state.clear()  # the caller's dict no longer holds the tensors: each is freed once quantized
            quantizer = WeightQuantizer(quantize, kernels=kernels)
            return cls.from_module_state(config, module_state, dtype, source, quantizer)
        state = cast_floats(state, lambda key: torch.float32 if key.startswith(FLOAT32_PREFIXES) else dtype)
        model = cls(config, device="meta", dtype=dtype)
        assign_state(model, file_to_module_state(state, drop_depformer=config.depformer is None), source)
        return model.eval().requires_grad_(False)

    @classmethod
    def from_module_state(cls, config: LMConfig, module_state: dict[str, Tensor], dtype: torch.dtype, source: str,
                          quantizer: WeightQuantizer) -> LM:
        """A quantized model from ``module_state`` (:class:`LM` names; emptied as it goes: each float weight is
        freed once quantized): every weight :func:`~dsmcli.engine.quantize.quantization_targets` names is declared
        as its quantized holder, the rest assigned as loaded."""
        model = cls(config, device="meta", dtype=dtype)
        for name, (module, attribute) in quantization_targets(model).items():
            expected = module._parameters[attribute]
            weight = module_state.pop(name, None)
            if weight is None:
                raise ModelLoadError(f"{source}: missing tensor {name}")
            if expected is not None and tuple(weight.shape) != tuple(expected.shape):
                raise ModelLoadError(f"{source}: tensor {name} has shape {tuple(weight.shape)} in the file, "
                                     f"the model expects {tuple(expected.shape)}")
            quantizer.replace(module, attribute, weight.to(dtype))
            del weight
        module_state = cast_floats(module_state, lambda key: torch.float32 if key.startswith(FLOAT32_MODULES)
                                   else dtype)
        assign_state(model, {**module_state, **quantized_state(model)}, source)
        model.quantization = quantizer.report()
        return model.eval().requires_grad_(False)

    @property
    def dtype(self) -> torch.dtype:
        return self.text_linear.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.text_linear.weight.device

    # ------------------------------------------------------------------------------------- one step
    def encode_conditions(self, inputs: ConditionInputs | None) -> ConditionTensors:
        """Fused conditions of a batch, cast to the model dtype (None when the model has no fuser)."""
        if self.conditioning is None or self.config.fuser is None:
            if inputs is not None and (inputs.values or inputs.tensors):
                raise ValueError("this model takes no conditions")
            return ConditionTensors(None, None)
        if inputs is None:
            raise ValueError(f"this model needs conditions: {sorted(self.conditioning.conditioners)}")
        fused = self.conditioning.encode(inputs)
        return ConditionTensors(*(None if t is None else t.to(self.dtype) for t in (fused.sum, fused.cross)))

    def attention_kernels(self, kernels: KernelChoice | str) -> KernelChoice:
        """The kernel choice of a stream's attention under the stream's ``kernels``: a quantized model on CPU
        attends with the native decode kernel over float16 KV rings and cross sources (``kernels`` decides;
        ~3e-4 relative, its path is not bit-exact anyway; see :mod:`dsmcli.nn.kv_rings`): with the 750-step
        window full, the KV reads cost more than the int8 weights at batch 16. A float model (or one off CPU)
        always attends with SDPA over rings of its dtype (``torch``)."""
        if self.quantization is None or self.device.type != "cpu":
            return KernelChoice.TORCH
        return KernelChoice(kernels)

    def init_state(self, batch_size: int, cross_source: Tensor | None = None, static: bool = False,
                   kernels: KernelChoice | str = KernelChoice.AUTO, compiled: bool = False,
                   cross: list[tuple[Tensor, Tensor]] | None = None) -> TransformerState:
        """Empty backbone rings of ``context`` steps for ``batch_size`` slots (cross source ``[B, S, D]``);
        ``static``: attend over the whole ring from the first step (fixed shapes, for ``torch.compile``);
        ``kernels``: the stream's choice (:meth:`attention_kernels`; a float32 model on CPU also takes its linears'
        native product from it, see :func:`dsmcli.nn.linear.linear`, unless the step is ``compiled``: inductor
        compiles its own); ``cross``: the source's per-layer keys/values already projected, instead of
        ``cross_source`` (see :meth:`Transformer.init_state`)."""
        context = self.config.transformer.context
        if context is None:  # LMConfig.from_dict refuses this; a hand-built config might not
            raise ValueError("the backbone needs an attention context to size its KV rings")
        return self.transformer.init_state(batch_size, context, self.device, self.dtype, cross_source, static,
                                           self.attention_kernels(kernels),
                                           KernelChoice.TORCH if compiled else KernelChoice(kernels), cross)

    def embed(self, tokens: Tensor, condition_sum: Tensor | None = None) -> Tensor:
        """``tokens`` ``[B, n_q + 1, T]`` (stream 0 text) -> summed input ``[B, T, D]``.

        The audio tables are read in one pass (-1 tokens read row 0, then their rows are zeroed at once); the
        rows are then added in stream order, audio then text, in the model dtype (as the reference rounds).
        """
        audio = tokens[:, 1:]
        ids = audio.clamp(min=0)
        rows = torch.stack([F.embedding(ids[:, q], cast(TokenEmbedding, emb).weight)
                            for q, emb in enumerate(self.emb)])  # [n_q, B, T, D]
        rows.masked_fill_((audio == ZERO_TOKEN_ID).transpose(0, 1)[..., None], 0.0)
        x = rows[0]
        for row in rows[1:]:
            x = x + row
        x = x + self.text_emb(tokens[:, 0])
        return x if condition_sum is None else x + condition_sum.to(x)

    def backbone(self, tokens: Tensor, positions: Tensor, state: TransformerState, active: Tensor | None = None,
                 condition_sum: Tensor | None = None) -> Tensor:
        """``tokens`` ``[B, n_q + 1, T]`` at ``positions`` ``[B, T]`` -> normalised output ``[B, T, D]``."""
        x = self.transformer(self.embed(tokens, condition_sum), positions, state, active)
        return self.out_norm(x)

    def step(self, tokens: Tensor, positions: Tensor, state: TransformerState, active: Tensor | None = None,
             condition_sum: Tensor | None = None) -> ModelStep:
        """The model part of one step (what ``EngineOptions.compile`` compiles): ``tokens`` ``[B, n_q + 1, 1]`` at
        ``positions`` ``[B, 1]`` -> backbone output, text logits and extra-head probabilities."""
        hidden = self.backbone(tokens, positions, state, active, condition_sum)
        return ModelStep(hidden, self.text_logits(hidden, state.product), self.extra_probs(hidden))

    def text_logits(self, hidden: Tensor, product: Callable | None = None) -> Tensor:
        """``[B, T, D]`` -> ``[B, T, text_card_out]`` (``product``: :func:`dsmcli.nn.linear.linear`'s)."""
        return linear(hidden, self.text_linear.weight, self.text_linear.bias, product)

    def extra_probs(self, hidden: Tensor) -> Tensor | None:
        """Softmax of each extra head: ``[B, T, D]`` -> ``[B, T, heads, classes]`` (None without heads)."""
        if not self.extra_heads:
            return None
        heads = [cast(nn.Linear, head).weight for head in self.extra_heads]
        return torch.stack([torch.softmax(linear(hidden, weight), dim=-1) for weight in heads], dim=-2)
