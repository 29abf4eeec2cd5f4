"""SEANet convolutional encoder (audio → 25 Hz latent) and decoder (latent → audio), FORMAT.md §2.2–2.3.

Both are a flat list of layers whose indices match the released names (``encoder.model.{i}``): ELUs
take an index but hold no weights. Every conv is causal; streaming state is one entry per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from dsmcli.codec.config import SEANetConfig
from dsmcli.codec.conv import CausalConv1d, CausalConvTranspose1d, ConvState, ConvTrState, SlotState
from dsmcli.kernels import KernelChoice
from dsmcli.kernels.codec import seanet_step_op

ELU, PUSH, ADD = 0, 2, 3  # the native step's program (dsmcli/kernels/seanet_step.cpp; conv codes: conv.py)


@dataclass
class LayerStates:
    """Streaming state of a layer list: one entry per layer, None for stateless layers."""

    items: list[SlotState | None]

    def reset(self, mask: Tensor) -> None:
        for item in self.items:
            if item is not None:
                item.reset(mask)


def init_layer_states(layers: nn.ModuleList, batch_size: int) -> LayerStates:
    return LayerStates([layer.init_state(batch_size) if hasattr(layer, "init_state") else None for layer in layers])


def step_layers(layers: nn.ModuleList, x: Tensor, states: LayerStates, active: Tensor | None) -> Tensor:
    for layer, state in zip(layers, states.items):
        x = layer(x) if state is None else layer.step(x, state, active)
    return x


@dataclass
class ResidualState:
    block: LayerStates
    shortcut: ConvState | None

    def reset(self, mask: Tensor) -> None:
        self.block.reset(mask)
        if self.shortcut is not None:
            self.shortcut.reset(mask)


class ResidualUnit(nn.Module):
    """``x + Conv_1(ELU(Conv_k(ELU(x))))`` with hidden width ``dim / compress`` (``block.{1,3}``)."""

    def __init__(self, config: SEANetConfig, dim: int, dilation: int):
        super().__init__()
        hidden = dim // config.compress
        self.block = nn.ModuleList([
            nn.ELU(config.elu_alpha),
            CausalConv1d(dim, hidden, config.residual_kernel_size, dilation=dilation, pad_mode=config.pad_mode),
            nn.ELU(config.elu_alpha),
            CausalConv1d(hidden, dim, 1, pad_mode=config.pad_mode),
        ])
        self.shortcut = None if config.true_skip else CausalConv1d(dim, dim, 1, pad_mode=config.pad_mode)

    def forward(self, x: Tensor) -> Tensor:
        y = x
        for layer in self.block:
            y = layer(y)
        return (x if self.shortcut is None else self.shortcut(x)) + y

    def init_state(self, batch_size: int) -> ResidualState:
        shortcut = None if self.shortcut is None else self.shortcut.init_state(batch_size)
        return ResidualState(init_layer_states(self.block, batch_size), shortcut)

    def step(self, x: Tensor, state: ResidualState, active: Tensor | None = None) -> Tensor:
        y = step_layers(self.block, x, state.block, active)
        skip = x if self.shortcut is None else self.shortcut.step(x, state.shortcut, active)
        return skip + y


class _LayerStack(nn.Module):
    """A ``model`` layer list with one-shot and streaming evaluation."""

    model: nn.ModuleList
    config: SEANetConfig
    _plan: NativePlan | None = None  # the native step's program, built on the first step (after the weights load)
    kernels: KernelChoice = KernelChoice.AUTO  # Mimi's CodecOptions.kernels (set when Mimi is built)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.model:
            x = layer(x)
        return x

    def init_state(self, batch_size: int) -> LayerStates:
        return init_layer_states(self.model, batch_size)

    def step(self, x: Tensor, state: LayerStates, active: Tensor | None = None) -> Tensor:
        """Streaming step; on CPU in float32 one native call (``dsmcli/kernels/seanet_step.cpp``: the same
        arithmetic up to float rounding), else layer by layer."""
        plan = self._native_plan()
        if plan is not None and (op := seanet_step_op(self.kernels, plan.convs[0].native_fits(x))) is not None:
            pairs = list(zip(plan.convs, _conv_states(self.model, state)))
            tails = [conv.native_tail(s) for conv, s in pairs]
            fresh = [conv.native_fresh(s) for conv, s in pairs]
            return op(x, plan.program, plan.weights, plan.biases, tails, plan.strides, plan.dilations, fresh, active,
                      self.config.elu_alpha)
        return step_layers(self.model, x, state, active)

    def _native_plan(self) -> NativePlan | None:
        """The layers as the native step's program (built once), or None if a layer does not fit it (a residual
        shortcut conv, a grouped conv, another activation)."""
        cached = self._plan
        if cached is not None and cached.weights[0] is cached.convs[0].layer.weight:
            return cached
        program: list[int] = []
        convs: list[CausalConv1d | CausalConvTranspose1d] = []

        def add(layer: nn.Module) -> bool:
            if isinstance(layer, nn.ELU) and layer.alpha == self.config.elu_alpha:
                program.append(ELU)
            elif isinstance(layer, (CausalConv1d, CausalConvTranspose1d)) and layer.native_code() is not None:
                program.append(layer.native_code())
                convs.append(layer)
            elif isinstance(layer, ResidualUnit) and layer.shortcut is None:
                program.append(PUSH)
                if not all(add(inner) for inner in layer.block):
                    return False
                program.append(ADD)
            else:
                return False
            return True

        if not all(add(layer) for layer in self.model) or not convs:
            return None
        self._plan = NativePlan(program, convs, [c.layer.weight for c in convs], [c.layer.bias for c in convs],
                                [c.stride for c in convs], [c.dilation for c in convs])
        return self._plan


class SEANetEncoder(_LayerStack):
    """Audio ``[B, channels, N]`` → latent ``[B, dimension, N / hop_length]``."""

    def __init__(self, config: SEANetConfig):
        super().__init__()
        self.config = c = config
        width = c.n_filters
        layers: list[nn.Module] = [CausalConv1d(c.channels, width, c.kernel_size, pad_mode=c.pad_mode)]
        for ratio in reversed(c.ratios):
            layers += [ResidualUnit(c, width, c.dilation_base**j) for j in range(c.n_residual_layers)]
            layers += [nn.ELU(c.elu_alpha),
                       CausalConv1d(width, 2 * width, 2 * ratio, stride=ratio, pad_mode=c.pad_mode)]
            width *= 2
        layers += [nn.ELU(c.elu_alpha), CausalConv1d(width, c.dimension, c.last_kernel_size, pad_mode=c.pad_mode)]
        self.model = nn.ModuleList(layers)


@dataclass
class NativePlan:
    """The native SEANet step's static arguments: its program and, per conv in program order, the module, weight,
    bias, stride and dilation."""

    program: list[int]
    convs: list[CausalConv1d | CausalConvTranspose1d]
    weights: list[Tensor]
    biases: list[Tensor | None]
    strides: list[int]
    dilations: list[int]


def _conv_states(layers: nn.ModuleList, states: LayerStates) -> list[ConvState | ConvTrState]:
    """The states of the (transposed) convs of ``layers`` in order (residual units' blocks included)."""
    found: list[ConvState | ConvTrState] = []
    for layer, item in zip(layers, states.items):
        if isinstance(layer, ResidualUnit):
            found += _conv_states(layer.block, item.block)
        elif isinstance(layer, (CausalConv1d, CausalConvTranspose1d)):
            found.append(item)
    return found


class SEANetDecoder(_LayerStack):
    """Latent ``[B, dimension, T]`` → audio ``[B, channels, T * hop_length]``."""

    def __init__(self, config: SEANetConfig):
        super().__init__()
        self.config = c = config
        width = c.n_filters * 2 ** len(c.ratios)
        layers: list[nn.Module] = [CausalConv1d(c.dimension, width, c.kernel_size, pad_mode=c.pad_mode)]
        for ratio in c.ratios:
            layers += [nn.ELU(c.elu_alpha), CausalConvTranspose1d(width, width // 2, 2 * ratio, stride=ratio)]
            width //= 2
            layers += [ResidualUnit(c, width, c.dilation_base**j) for j in range(c.n_residual_layers)]
        layers += [nn.ELU(c.elu_alpha), CausalConv1d(width, c.channels, c.last_kernel_size, pad_mode=c.pad_mode)]
        self.model = nn.ModuleList(layers)
