"""Batched streaming: independent slots (reset mid-way, paused with ``active``) equal separate streams."""

from __future__ import annotations

import pytest
import torch

from dsmcli.codec import Mimi
from dsmcli.hub.loaders import load_mimi

FRAMES = 40
RESET_AT = 15  # slot 1 restarts here on another clip
PAUSED = range(5, 9)  # slot 2 skips these calls (its state must not move)
LATENT_TOL = 1e-5
AUDIO_TOL = 1e-5


@pytest.fixture(scope="module")
def tiny_mimi(tiny_stt) -> Mimi:
    return load_mimi(tiny_stt)


@pytest.fixture(scope="module")
def clips(bria_24k, loona_24k, tiny_mimi) -> torch.Tensor:
    """``[4, 1, FRAMES * frame_size]``: three streams, and the clip slot 1 switches to after its reset."""
    seconds = FRAMES * tiny_mimi.frame_size / tiny_mimi.sample_rate
    sources = [bria_24k(seconds, 0.0), loona_24k(seconds, 3.0), bria_24k(seconds, 20.0), loona_24k(seconds, 15.0)]
    return torch.stack([torch.from_numpy(s) for s in sources])[:, None, :]


def _schedule(t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(reset mask, active mask) for call ``t``."""
    reset = torch.tensor([False, t == RESET_AT, False])
    active = torch.tensor([True, True, t not in PAUSED])
    return reset, active


def _slot_inputs(frames: torch.Tensor, clips: torch.Tensor) -> list[list[torch.Tensor]]:
    """What each slot actually consumes, in order, as separate streams (slot 1 split at its reset)."""
    return [
        list(frames[0]),
        list(frames[1][:RESET_AT]),
        list(frames[3][RESET_AT:]),
        [f for t, f in enumerate(frames[2]) if t not in PAUSED],
    ]


def _batched(step, state, inputs: torch.Tensor) -> list[torch.Tensor]:
    outputs = []
    for t in range(inputs.shape[0]):
        reset, active = _schedule(t)
        state.reset(reset)
        outputs.append(step(inputs[t], state, active))
    return outputs


def _by_slot(outputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Batched outputs regrouped like ``_slot_inputs`` (paused calls dropped)."""
    slot = [torch.stack([o[i] for o in outputs]) for i in range(3)]
    kept = torch.tensor([t not in PAUSED for t in range(len(outputs))])
    return [slot[0], slot[1][:RESET_AT], slot[1][RESET_AT:], slot[2][kept]]


def _separate(step, mimi: Mimi, sequences: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    results = []
    for sequence in sequences:
        state = mimi.init_state(1)
        results.append(torch.stack([step(x[None], state)[0] for x in sequence]))
    return results


def test_batched_encode_with_reset_and_pause_equals_separate_streams(tiny_mimi: Mimi, clips):
    frames = clips.unflatten(-1, (FRAMES, tiny_mimi.frame_size)).permute(0, 2, 1, 3)  # [4, FRAMES, 1, fs]
    # Batched call t feeds slot 1 its second clip after the reset; paused calls feed slot 2 noise.
    batch_in = frames[:3].clone()
    batch_in[1, RESET_AT:] = frames[3, RESET_AT:]
    batch_in[2, list(PAUSED)] = torch.randn(len(PAUSED), 1, tiny_mimi.frame_size)
    batch_in = batch_in.transpose(0, 1)  # [FRAMES, 3, 1, fs]

    latents = _by_slot(_batched(tiny_mimi.encode_latent_step, tiny_mimi.init_state(3), batch_in))
    codes = _by_slot(_batched(tiny_mimi.encode_step, tiny_mimi.init_state(3), batch_in))
    sequences = _slot_inputs(frames, clips)
    expected_latents = _separate(tiny_mimi.encode_latent_step, tiny_mimi, sequences)
    expected_codes = _separate(tiny_mimi.encode_step, tiny_mimi, sequences)
    for got, want in zip(latents, expected_latents):
        assert (got - want).abs().max() <= LATENT_TOL
    for got, want in zip(codes, expected_codes):
        assert torch.equal(got, want)


def test_batched_decode_with_reset_and_pause_equals_separate_streams(tiny_mimi: Mimi, clips):
    codes = tiny_mimi.encode(clips)  # [4, K, FRAMES]
    batch_in = codes[:3].clone()
    batch_in[1, :, RESET_AT:] = codes[3, :, RESET_AT:]
    batch_in = batch_in.permute(2, 0, 1)[..., None]  # [FRAMES, 3, K, 1]
    audio = _by_slot(_batched(tiny_mimi.decode_step, tiny_mimi.init_state(3), batch_in))
    per_frame = codes.permute(0, 2, 1)[..., None]  # [4, FRAMES, K, 1]
    expected = _separate(tiny_mimi.decode_step, tiny_mimi, _slot_inputs(per_frame, clips))
    for got, want in zip(audio, expected):
        assert got.shape == want.shape
        assert (got - want).abs().max() <= AUDIO_TOL


def test_streaming_encode_rejects_partial_frames(tiny_mimi: Mimi):
    state = tiny_mimi.init_state(1)
    for length in (0, tiny_mimi.frame_size - 1, tiny_mimi.frame_size + 7):
        with pytest.raises(ValueError, match="multiple of"):
            tiny_mimi.encode_step(torch.zeros(1, 1, length), state)
    with pytest.raises(ValueError, match="state was made for"):
        tiny_mimi.encode_step(torch.zeros(2, 1, tiny_mimi.frame_size), state)


def test_multi_frame_steps_match_frame_by_frame_within_context(tiny_mimi: Mimi, clips):
    """Feeding n frames per call equals n single-frame calls while the ring has not wrapped."""
    frames_in_context = tiny_mimi.config.transformer.context // tiny_mimi.config.resample_stride
    wav = clips[:2, :, : frames_in_context * tiny_mimi.frame_size]
    one = tiny_mimi.init_state(2)
    single = torch.cat([tiny_mimi.encode_latent_step(f, one) for f in wav.split(tiny_mimi.frame_size, -1)], -1)
    many = tiny_mimi.init_state(2)
    chunked = torch.cat([tiny_mimi.encode_latent_step(f, many) for f in wav.split(3 * tiny_mimi.frame_size, -1)], -1)
    assert (single - chunked).abs().max() <= LATENT_TOL


def test_drop_encoder_decodes_identically_and_refuses_to_encode(tiny_stt) -> None:
    """Decode-only Mimi (embedding-voice TTS): same decode output, no encoder state, clear encode error."""
    full, light = load_mimi(tiny_stt), load_mimi(tiny_stt)
    light.drop_encoder()
    assert not hasattr(light, "encoder") and not light.has_encoder
    assert sum(p.numel() for p in light.parameters()) < sum(p.numel() for p in full.parameters())
    codes = torch.randint(0, full.cardinality, (1, full.total_codebooks, 3))
    state_full, state_light = full.init_state(1), light.init_state(1)
    assert state_light.encoder is None
    state_light.reset(torch.ones(1, dtype=torch.bool))
    assert torch.equal(full.decode_step(codes, state_full), light.decode_step(codes, state_light))
    with pytest.raises(RuntimeError, match="decode-only"):
        light.encode(torch.zeros(1, 1, light.frame_size))
    with pytest.raises(RuntimeError, match="decode-only"):
        light.encode_step(torch.zeros(1, 1, light.frame_size), state_light)
    rvq = light.quantizer.rvq_first  # the codebook sums are freed, the centroid table decoding reads is kept
    assert all(level._codebook.embedding_sum is None for level in rvq.vq.layers)
    assert torch.equal(rvq.augmented_table, full.quantizer.rvq_first.augmented_table)
    with pytest.raises(RuntimeError, match="decode-only"):
        rvq.refresh()


def test_refresh_rebuilds_the_same_table(tiny_stt) -> None:
    """The augmented table written level by level holds what stacking and concatenating gave: [e, 1, |e|^2]."""
    rvq = load_mimi(tiny_stt).quantizer.rvq_rest
    table = torch.stack([level._codebook.centroids(rvq.epsilon) for level in rvq.vq.layers])
    expected = torch.cat([table, torch.ones_like(table[..., :1]), table.pow(2).sum(-1, keepdim=True)], dim=-1)
    rvq.refresh()
    assert torch.equal(rvq.augmented_table, expected)
