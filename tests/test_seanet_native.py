"""The native streaming step of Mimi's SEANet encoder (``dsmcli/kernels/seanet_step.cpp``) against the layer-by-layer
torch path: same outputs up to float rounding over many steps (tails carried, 1 or several frames per call), slots
independent of their batch mates bit for bit (with resets and paused slots), and the torch path for layers the
native program does not cover."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import dsmcli.codec.conv as conv_module
import dsmcli.codec.seanet as seanet_module
from dsmcli.codec.config import PadMode, SEANetConfig
from dsmcli.codec.seanet import SEANetEncoder
from dsmcli.kernels.codec import seanet_step_op

REL_TOL = 1e-5  # float sums in other orders through 14 convs, relative to the largest output

needs_native = pytest.mark.skipif(seanet_step_op("auto") is None,
                                  reason="the native SEANet kernel cannot be built here")


def _must_not_run(choice, fits=True):
    """A stand-in for the op lookup: fails when asked for an op that fits (the native op would run)."""
    if fits:
        pytest.fail("the native op was called")

SMALL = SEANetConfig(dimension=24, n_filters=4, ratios=(4, 3, 2), n_residual_layers=2)  # hop 24, dilations 1, 2
RELEASED = SEANetConfig()  # 64 filters, ratios (8, 6, 5, 4), 512-d: hop 960


def _encoder(config: SEANetConfig, seed: int) -> SEANetEncoder:
    torch.manual_seed(seed)
    encoder = SEANetEncoder(config)
    with torch.no_grad():
        for p in encoder.parameters():
            p.copy_(torch.randn_like(p) / (p[0].numel() ** 0.5) if p.dim() > 1 else 0.1 * torch.randn_like(p))
    return encoder.eval()


def _stream(encoder: SEANetEncoder, chunks: list[torch.Tensor], native: bool, monkeypatch) -> torch.Tensor:
    if not native:
        monkeypatch.setattr(seanet_module, "seanet_step_op", lambda *args: None)
        monkeypatch.setattr(conv_module, "seanet_step_op", lambda *args: None)
    state = encoder.init_state(chunks[0].shape[0])
    with torch.no_grad():
        out = torch.cat([encoder.step(chunk, state) for chunk in chunks], dim=-1)
    monkeypatch.undo()
    return out


@needs_native
@pytest.mark.parametrize("config,hops_per_call,calls", [(SMALL, 1, 12), (SMALL, 3, 5), (RELEASED, 2, 6),
                                                       (replace(SMALL, pad_mode=PadMode.REPLICATE), 1, 8)])
def test_native_step_matches_torch_path(config, hops_per_call, calls, monkeypatch):
    encoder = _encoder(config, calls)
    assert encoder._native_plan() is not None
    x = 0.3 * torch.randn(2, 1, config.hop_length * hops_per_call * calls)
    chunks = list(x.split(config.hop_length * hops_per_call, dim=-1))
    native = _stream(encoder, chunks, True, monkeypatch)
    torch_path = _stream(encoder, chunks, False, monkeypatch)
    assert native.shape == torch_path.shape == (2, config.dimension, hops_per_call * calls)
    assert (native - torch_path).abs().max() <= REL_TOL * torch_path.abs().max()
    with torch.no_grad():  # and the one-shot forward, which streaming from a fresh state equals
        assert (native - encoder(x)).abs().max() <= REL_TOL * torch_path.abs().max()


@needs_native
def test_native_step_slots_do_not_depend_on_batch_mates():
    encoder = _encoder(SMALL, 1)
    torch.manual_seed(2)
    hop = SMALL.hop_length
    x = torch.randn(3, 1, hop * 10)
    paused = {3: torch.tensor([True, True, False]), 4: torch.tensor([True, True, False])}
    batched = encoder.init_state(3)
    outs = []
    with torch.no_grad():
        for t, chunk in enumerate(x.split(hop, dim=-1)):
            if t == 6:
                batched.reset(torch.tensor([False, True, False]))
            outs.append(encoder.step(chunk, batched, paused.get(t)))
        for slot in range(3):
            alone = encoder.init_state(1)
            for t, chunk in enumerate(x.split(hop, dim=-1)):
                if slot == 2 and t in paused:
                    continue  # paused: its tails must not have moved
                if slot == 1 and t == 6:
                    alone = encoder.init_state(1)
                assert torch.equal(encoder.step(chunk[slot : slot + 1], alone)[0], outs[t][slot]), (slot, t)


def test_layers_outside_the_native_program_take_the_torch_path(monkeypatch):
    encoder = _encoder(replace(SMALL, true_skip=False), 3)  # residual shortcut convs
    assert encoder._native_plan() is None
    monkeypatch.setattr(seanet_module, "seanet_step_op", _must_not_run)
    with torch.no_grad():
        x = torch.randn(1, 1, SMALL.hop_length * 4)
        assert encoder.step(x, encoder.init_state(1)).shape == (1, SMALL.dimension, 4)


@needs_native
def test_native_step_is_deterministic():
    """Same input, same bits, whatever the heap looks like (BLAS rounds by operand alignment: buffers are aligned)."""
    encoder = _encoder(RELEASED, 4)
    x = 0.3 * torch.randn(1, 1, RELEASED.hop_length * 2)
    with torch.no_grad():
        first = encoder.step(x, encoder.init_state(1))
        for size in (1, 3, 17, 1000):
            clutter = [torch.empty(size * 7) for _ in range(5)]  # move the allocator around
            assert torch.equal(encoder.step(x, encoder.init_state(1)), first)
            del clutter
