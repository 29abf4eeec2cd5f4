"""The native streaming step of Mimi's transformer (``dsmcli/kernels/mimi_transformer.cpp``) against the layer-by-layer
torch path: same outputs up to float rounding through a wrapping ring, slots independent of their batch mates
bit for bit (with resets and paused slots), the torch path when the kernel is unavailable, and its attention the
decode attention's bit for bit (one loop, ``dsmcli/kernels/attention.h``)."""

from __future__ import annotations

import pytest
import torch

from dsmcli.codec.config import TransformerConfig
from dsmcli.codec.transformer import MimiTransformer
from dsmcli.kernels import KernelChoice
from dsmcli.kernels.attention import decode_attention_op
from dsmcli.kernels.codec import mimi_transformer_op

REL_TOL = 2e-5  # float sums in other orders over 8 layers, relative to the largest output

needs_native = pytest.mark.skipif(mimi_transformer_op("auto") is None,
                                  reason="the native Mimi kernel cannot be built here")

SMALL = TransformerConfig(d_model=64, num_heads=4, num_layers=3, dim_feedforward=96, context=10,
                          input_dimension=48, output_dimension=40)  # with both projections
UNPROJECTED = TransformerConfig(d_model=64, num_heads=4, num_layers=3, dim_feedforward=96, context=10,
                                input_dimension=64, output_dimension=64)  # as released: BLAS projections are not
                                                                          # batch-invariant
RELEASED = TransformerConfig()  # 512-d, 8 heads, 8 layers, 2048 FFN, context 250


def _model(config: TransformerConfig, seed: int) -> MimiTransformer:
    torch.manual_seed(seed)
    model = MimiTransformer(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p) if name.endswith("weight") else 0.1 * torch.randn_like(p))
            elif "scale" in name:
                p.copy_(0.05 + 0.1 * torch.rand_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
    return model.eval()


def _stream(model: MimiTransformer, chunks: list[torch.Tensor], native: bool, monkeypatch) -> torch.Tensor:
    if not native:
        monkeypatch.setattr(model, "kernels", KernelChoice.TORCH)  # the transformer step only: its linears stay
    state = model.init_state(chunks[0].shape[0])
    with torch.no_grad():
        out = torch.cat([model.step(chunk, state) for chunk in chunks], dim=-1)
    monkeypatch.undo()
    return out


@needs_native
@pytest.mark.parametrize("config,steps,chunk", [(SMALL, 31, 2), (SMALL, 30, 3), (SMALL, 12, 1),
                                                (RELEASED, 270, 2)])
def test_native_step_matches_torch_path_through_a_wrapping_ring(config, steps, chunk, monkeypatch):
    model = _model(config, steps)
    x = torch.randn(2, config.input_dimension, steps)
    chunks = list(x.split(chunk, dim=-1))
    native = _stream(model, chunks, True, monkeypatch)
    torch_path = _stream(model, chunks, False, monkeypatch)
    assert native.shape == torch_path.shape == (2, config.output_dimension, steps)
    assert (native - torch_path).abs().max() <= REL_TOL * torch_path.abs().max()
    # the step's layers' rings and offsets advanced alike on both paths
    state = model.init_state(2)
    with torch.no_grad():
        model.step(chunks[0], state)
    assert state.offset.tolist() == [chunk, chunk]
    assert state.rings.positions[:, :chunk].tolist() == [list(range(chunk))] * 2


@needs_native
def test_native_step_slots_do_not_depend_on_batch_mates():
    model = _model(UNPROJECTED, 1)
    torch.manual_seed(2)
    x = torch.randn(3, UNPROJECTED.d_model, 24)
    active_at = {4: torch.tensor([True, True, False]), 5: torch.tensor([True, True, False])}
    batched = model.init_state(3)
    outs = []
    with torch.no_grad():
        for t, chunk in enumerate(x.split(2, dim=-1)):
            if t == 7:
                batched.reset(torch.tensor([False, True, False]))
            outs.append(model.step(chunk, batched, active_at.get(t)))
        for slot in range(3):
            alone = model.init_state(1)
            for t, chunk in enumerate(x.split(2, dim=-1)):
                if slot == 2 and t in active_at:
                    continue  # paused: its state must not have moved
                if slot == 1 and t == 7:
                    alone = model.init_state(1)
                assert torch.equal(model.step(chunk[slot : slot + 1], alone)[0], outs[t][slot]), (slot, t)


@needs_native
@pytest.mark.skipif(decode_attention_op("auto") is None, reason="the native decode attention cannot be built here")
def test_native_step_and_decode_attention_share_one_attention_loop():
    """Both kernels attend with ``dsmcli/kernels/attention.h``: on the same query, ring and visible cells they give
    the same bits. The one-layer step below passes its attention through exactly: x = 0 makes norm1's output its
    bias, a one-hot that selects in_proj's first column as (q, k, v); out_proj is the identity, layer scale 1 after
    attention and 0 after the feed-forward."""
    config = TransformerConfig(d_model=128, num_heads=2, num_layers=1, dim_feedforward=32, context=30, rope=False,
                               input_dimension=128, output_dimension=128)
    model = _model(config, 3)
    generator = torch.Generator().manual_seed(4)
    qkv = torch.randn(3 * config.d_model, generator=generator)
    decode = decode_attention_op("auto")
    with torch.no_grad():
        layer = model.transformer.layers[0]
        layer.norm1.bias.zero_()[0] = 1.0
        layer.self_attn.in_proj_weight.zero_()[:, 0] = qkv
        layer.self_attn.out_proj.weight.copy_(torch.eye(config.d_model))
        layer.layer_scale_1.scale.fill_(1.0)
        layer.layer_scale_2.scale.fill_(0.0)
    state = model.init_state(1)
    rings, capacity = state.rings, state.rings.capacity
    rings.keys[0].copy_(torch.randn(rings.keys[0].shape, generator=generator))
    rings.values[0].copy_(torch.randn(rings.values[0].shape, generator=generator))
    state.offset.fill_(100)  # the query's position: cells from 71 to 99 are in its window, the rest not or empty
    rings.positions[0, :capacity] = torch.randint(60, 100, (capacity,), generator=generator)
    rings.positions[0, :5] = -1
    with torch.no_grad():
        out = model.step(torch.zeros(1, config.d_model, 1), state)[0, :, 0]
    cell = 100 % capacity
    assert rings.positions[0, cell] == 100 and state.offset.tolist() == [101]
    heads, head_dim = config.num_heads, config.head_dim
    assert torch.equal(rings.keys[0][0, :, cell], qkv[config.d_model : 2 * config.d_model].view(heads, head_dim))
    held = rings.positions[:, :capacity]
    visible = (held >= 0) & (held > 100 - config.context)
    assert 0 < int(visible.sum()) < capacity
    q = qkv[: config.d_model].view(1, heads, 1, head_dim)
    expected = decode(q, rings.keys[0], rings.values[0], visible.view(1, 1, 1, capacity))
    assert torch.equal(out, expected.flatten())
