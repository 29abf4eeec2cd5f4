"""Shared attention primitives (dsmcli.nn) against the reference and against brute force."""

from __future__ import annotations

import pytest
import torch

from dsmcli.nn import KVRings, RMSNorm, apply_rope, attend, context_mask, make_norm


def _positions(offsets: torch.Tensor, steps: int) -> torch.Tensor:
    return offsets[:, None] + torch.arange(steps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("max_period", [10_000.0, 100_000.0])
def test_rope_matches_reference_per_slot_offsets(dtype, max_period):
    from moshi.modules.rope import apply_rope as ref_apply_rope

    torch.manual_seed(0)
    q = torch.randn(3, 4, 5, 64).to(dtype)
    k = torch.randn(3, 4, 5, 64).to(dtype)
    offsets = torch.tensor([0, 7, 123_456])
    ref_q, ref_k = ref_apply_rope(q, k, offsets, max_period=max_period)
    pos = _positions(offsets, 5)
    ours_q, ours_k = apply_rope(q, k, pos, pos, max_period)
    assert ours_q.dtype == dtype and ours_k.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 0.0
    assert (ours_q.float() - ref_q.float()).abs().max() <= tol
    assert (ours_k.float() - ref_k.float()).abs().max() <= tol


def test_rope_rotates_interleaved_pairs():
    head_dim, max_period, pos = 4, 100.0, 3
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, head_dim)
    out, _ = apply_rope(x, x, torch.tensor([[pos]]), torch.tensor([[pos]]), max_period)
    expected = []
    for i in range(head_dim // 2):
        angle = torch.tensor(pos * max_period ** (-2 * i / head_dim))
        a, b = x.flatten()[2 * i], x.flatten()[2 * i + 1]
        expected += [a * torch.cos(angle) - b * torch.sin(angle), a * torch.sin(angle) + b * torch.cos(angle)]
    torch.testing.assert_close(out.flatten(), torch.stack(expected), atol=1e-6, rtol=0)


class _Stream:
    """One-layer KVRings stepped as Mimi's transformer steps them: ``T`` steps per call at each slot's offset."""

    def __init__(self, batch: int, heads: int, capacity: int, dim: int):
        self.rings = KVRings.create(1, batch, heads, capacity, dim, capacity, "cpu", torch.float32)
        self.offset = torch.zeros(batch, dtype=torch.long)

    def append(self, k, v, active=None):
        """Writes ``k``, ``v`` ``[B, H, T, D]``; returns the query positions ``[B, T]`` and the whole ring
        ``(keys, values, positions)``."""
        steps = k.shape[2]
        q_pos = _positions(self.offset, steps)
        self.rings.store(0, self.rings.claim(q_pos, active), k, v)
        self.offset += steps if active is None else active.long() * steps
        return q_pos, self.rings.ring(0)

    def reset(self, mask):
        self.rings.reset(mask)
        self.offset.masked_fill_(mask, 0)


def test_ring_matches_reference_ring_across_wrap():
    from moshi.modules.transformer import RingKVCache as RefRing

    torch.manual_seed(0)
    batch, heads, capacity, dim = 2, 3, 5, 4
    ours = _Stream(batch, heads, capacity, dim)
    ref = RefRing(batch, heads, dim, capacity, device=torch.device("cpu"), dtype=torch.float32)
    everyone = torch.ones(batch, dtype=torch.bool)
    for steps in [2, 2, 1, 2, 3, 2, 2]:  # wraps the ring several times
        k, v = torch.randn(2, batch, heads, steps, dim)
        _, (keys, values, pos) = ours.append(k, v)
        ref_out = ref.complete(k, v, everyone)
        assert torch.equal(pos, ref_out.positions)
        valid = pos >= 0
        assert torch.equal(keys.transpose(1, 2)[valid], ref_out.keys.transpose(1, 2)[valid])
        assert torch.equal(values.transpose(1, 2)[valid], ref_out.values.transpose(1, 2)[valid])


def test_two_steps_per_write_hide_the_oldest_key_after_wrap():
    """Mimi's quirk (FORMAT.md §2.5): writing 2 steps before attending costs the first query one key."""
    capacity = context = 4
    stream = _Stream(1, 1, capacity, 2)
    visible = []
    for _ in range(0, 10, 2):
        q_pos, (_, _, k_pos) = stream.append(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
        visible.append(context_mask(q_pos, k_pos, context)[0, 0].sum(-1).tolist())
    assert visible == [[1, 2], [3, 4], [3, 4], [3, 4], [3, 4]]
    # Offline (all keys at once) the same queries see min(p + 1, context) keys.
    pos = torch.arange(10)[None]
    assert context_mask(pos, pos, context)[0, 0].sum(-1).tolist() == [1, 2, 3, 4, 4, 4, 4, 4, 4, 4]


def test_a_claim_longer_than_the_ring_is_refused():
    stream = _Stream(1, 1, 3, 2)
    with pytest.raises(ValueError, match="cannot append 4 steps"):
        stream.append(torch.zeros(1, 1, 4, 2), torch.zeros(1, 1, 4, 2))


def _ring_attention(stream: _Stream, q, k, v, context, active=None):
    q_pos, (keys, values, k_pos) = stream.append(k, v, active)
    return attend(q, keys, values, context_mask(q_pos, k_pos, context))


def test_active_and_reset_slots_equal_separate_streams():
    torch.manual_seed(0)
    heads, capacity, dim, steps = 2, 6, 8, 2
    inputs = torch.randn(12, 3, 3, heads, steps, dim)  # [call, q/k/v, slot, ...]
    active = torch.ones(12, 3, dtype=torch.bool)
    active[3:5, 2] = False  # slot 2 pauses for two calls
    reset_at = 7  # slot 1 restarts here

    batched = _Stream(3, heads, capacity, dim)
    outs = []
    for call in range(12):
        if call == reset_at:
            batched.reset(torch.tensor([False, True, False]))
        q, k, v = inputs[call]
        outs.append(_ring_attention(batched, q, k, v, capacity, active[call]))

    for slot in range(3):
        single = _Stream(1, heads, capacity, dim)
        for call in range(12):
            if slot == 1 and call == reset_at:
                single = _Stream(1, heads, capacity, dim)
            if not active[call, slot]:
                continue
            q, k, v = inputs[call, :, slot : slot + 1]
            expected = _ring_attention(single, q, k, v, capacity)
            torch.testing.assert_close(outs[call][slot : slot + 1], expected, atol=1e-6, rtol=0)
        assert torch.equal(batched.offset[slot : slot + 1], single.offset)


def test_inactive_slot_state_untouched():
    stream = _Stream(2, 1, 3, 2)
    stream.append(torch.ones(2, 1, 2, 2), torch.ones(2, 1, 2, 2))
    before = [t.clone() for t in stream.rings.ring(0)]
    stream.append(torch.full((2, 1, 2, 2), 5.0), torch.full((2, 1, 2, 2), 5.0), torch.tensor([True, False]))
    for old, new in zip(before, stream.rings.ring(0)):
        assert torch.equal(old[1], new[1])
        assert not torch.equal(old[0], new[0])
    assert stream.rings.positions[:, -1].tolist() == [-1, -1]  # the scratch cell is never a key


def test_context_mask_rules():
    q_pos = torch.tensor([[5, 6]])
    k_pos = torch.tensor([[-1, 2, 3, 5, 6, 7]])
    assert context_mask(q_pos, k_pos, 3)[0, 0].tolist() == [
        [False, False, True, True, False, False],
        [False, False, False, True, True, False],
    ]
    assert context_mask(q_pos, k_pos, None)[0, 0].tolist() == [
        [False, True, True, True, False, False],
        [False, True, True, True, True, False],
    ]


def test_attend_matches_softmax_and_zeroes_empty_rows():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    mask = torch.rand(1, 1, 3, 5) > 0.4
    mask[..., 0, :] = True
    mask[..., 1, :] = False
    out = attend(q, k, v, mask)
    scores = (q @ k.transpose(-1, -2) / 2.0).masked_fill(~mask, float("-inf"))
    expected = torch.softmax(scores, -1).nan_to_num(0.0) @ v
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    assert torch.equal(out[:, :, 1], torch.zeros_like(out[:, :, 1]))


@pytest.mark.parametrize("kind", ["rms_norm_f32", "rms_norm", "layer_norm", "layer_norm_f32"])
def test_norms_match_reference(kind):
    from moshi.modules.transformer import create_norm_fn

    torch.manual_seed(0)
    ref = create_norm_fn(kind, 16)
    ours = make_norm(kind, 16)
    with torch.no_grad():
        for p in ref.parameters():
            p.uniform_(0.5, 1.5)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 16) * 3
    torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=0)
    if kind.startswith("rms"):  # the LM runs these in bf16: same bits as the reference
        x16 = x.to(torch.bfloat16)
        assert torch.equal(ours.to(torch.bfloat16)(x16), ref.to(torch.bfloat16)(x16))
    if kind == "rms_norm_f32":
        assert isinstance(ours, RMSNorm) and ours.alpha.shape == (1, 1, 16)


@pytest.mark.parametrize("context", [None, 1, 7, 50])
def test_causal_attend_in_blocks_equals_one_masked_call(context):
    from dsmcli.nn import causal_attend

    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, 37, 8)
    pos = torch.arange(37)[None]
    expected = attend(q, k, v, context_mask(pos, pos, context))
    assert torch.equal(causal_attend(q, k, v, context), expected)  # one block: the very same call
    for block in (1, 5, 16):
        torch.testing.assert_close(causal_attend(q, k, v, context, block=block), expected, atol=1e-6, rtol=0)
    assert causal_attend(q[:, :, :0], k[:, :, :0], v[:, :, :0], context).shape == (2, 2, 0, 8)
