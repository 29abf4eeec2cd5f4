"""Mimi parity with the reference (``moshi`` 0.2.13) on real speech, tiny and real-size, one-shot and streaming.

The reference is the oracle for everything: unquantized latents (1e-4 max abs), codes (equal
wherever the reference's nearest/second-nearest distance gap exceeds what the latent error can
explain, and >= 99.5 % equal overall), audio decoded from the same codes (1e-4 max abs). The clips
are longer than the transformer context, so the reference's streaming ring quirk (FORMAT.md §2.5)
is exercised; one-shot must then match the reference's *offline* path, and streaming its streaming path.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import cached_property

import pytest
import torch

from dsmcli.codec import Mimi
from dsmcli.hub.loaders import load_mimi

LATENT_TOL = 1e-4
AUDIO_TOL = 1e-4
MIN_CODE_AGREEMENT = 0.995
ROUNDING_SLACK = 1e-5  # relative to the residual norm: float32 distance rounding on top of the latent error
SECONDS = {"tiny": 24.0, "real": 20.8}  # real: 260 frames = 520 transformer steps > context 250


@dataclass
class Outputs:
    latent: torch.Tensor  # [1, C, T]
    codes: torch.Tensor  # [1, K, T]
    audio: torch.Tensor  # [1, 1, T * frame_size] decoded from the reference's codes
    seconds: float = 0.0


@dataclass
class Pair:
    """A reference Mimi and ours with the same weights, a clip, and each side's outputs (computed once)."""

    name: str
    ref: torch.nn.Module
    ours: Mimi
    wav: torch.Tensor  # [1, 1, N], N a whole number of frames
    ref_offline: Outputs
    ref_stream: Outputs

    @cached_property
    def ours_offline(self) -> Outputs:
        return _ours_offline(self.ours, self.wav, self.ref_offline.codes)

    @cached_property
    def ours_stream(self) -> Outputs:
        return _ours_stream(self.ours, self.wav, self.ref_stream.codes)


def _ref_offline(ref, wav) -> Outputs:
    start = time.perf_counter()
    with torch.no_grad():
        latent = ref.encode_to_latent(wav, quantize=False)
        codes = ref.quantizer.encode(latent)
        audio = ref.decode(codes)
    return Outputs(latent, codes, audio, time.perf_counter() - start)


def _ref_stream(ref, wav, frame_size: int) -> Outputs:
    start = time.perf_counter()
    frames = wav.split(frame_size, dim=-1)
    with torch.no_grad():
        with ref.streaming(1):
            latents = [ref.encode_to_latent(f, quantize=False) for f in frames]
        latent = torch.cat(latents, dim=-1)
        codes = torch.cat([ref.quantizer.encode(step) for step in latents], dim=-1)  # frame by frame, as streamed
        with ref.streaming(1):
            audio = torch.cat([ref.decode(codes[..., t : t + 1]) for t in range(codes.shape[-1])], dim=-1)
    return Outputs(latent, codes, audio, time.perf_counter() - start)


def _ours_offline(ours: Mimi, wav, ref_codes) -> Outputs:
    """One shot; codes quantize the latent (what ``encode`` does, checked on the tiny Mimi below)."""
    start = time.perf_counter()
    latent = ours.encode_to_latent(wav)
    codes = ours.quantizer.encode(latent, ours.num_codebooks)
    audio = ours.decode(ref_codes)
    return Outputs(latent, codes, audio, time.perf_counter() - start)


def _ours_stream(ours: Mimi, wav, ref_codes) -> Outputs:
    """Streaming one frame per call; codes are quantized frame by frame (what ``encode_step`` does)."""
    start = time.perf_counter()
    state = ours.init_state(1)
    latents = [ours.encode_latent_step(f, state) for f in wav.split(ours.frame_size, dim=-1)]
    latent = torch.cat(latents, dim=-1)
    codes = torch.cat([ours.quantizer.encode(step, ours.num_codebooks) for step in latents], dim=-1)
    audio = torch.cat([ours.decode_step(ref_codes[..., t : t + 1], state) for t in range(ref_codes.shape[-1])], -1)
    return Outputs(latent, codes, audio, time.perf_counter() - start)


def _make_pair(name: str, ref, ours: Mimi, speech: torch.Tensor) -> Pair:
    wav = speech[None, None, : speech.shape[-1] // ours.frame_size * ours.frame_size]
    return Pair(name, ref, ours, wav, _ref_offline(ref, wav), _ref_stream(ref, wav, ours.frame_size))


@pytest.fixture(scope="module")
def tiny_pair(fixture_dir, tiny_stt, bria_24k) -> Pair:
    from fixturelib.repos import MIMI_CONFIG_NAME, STT_MIMI_NAME
    from make_fixtures import load_ref_mimi

    repo = fixture_dir / "tiny-stt"
    config = json.loads((repo / MIMI_CONFIG_NAME).read_text())
    ref = load_ref_mimi(repo / STT_MIMI_NAME, config, num_codebooks=config["quantizer"]["n_q"])
    ours = load_mimi(tiny_stt)  # through the offline HF cache, with the mimi_config.json override
    return _make_pair("tiny", ref, ours, torch.from_numpy(bria_24k(SECONDS["tiny"])))


@pytest.fixture(scope="module")
def real_pair(real_mimi_path, bria_24k) -> Pair:
    from make_fixtures import load_ref_mimi

    ref = load_ref_mimi(real_mimi_path, None, num_codebooks=32)
    ours = load_mimi(real_mimi_path)
    return _make_pair("real", ref, ours, torch.from_numpy(bria_24k(SECONDS["real"])))


@pytest.fixture(params=["tiny", pytest.param("real", marks=pytest.mark.slow)])
def pair(request) -> Pair:
    return request.getfixturevalue(f"{request.param}_pair")


def _reference_distances(ref, latent: torch.Tensor, codes: torch.Tensor):
    """Teacher-forced reference view of every code position: for each level and step, the gap between the
    nearest and second-nearest centroid distance and the norm of the residual being quantized. ``[K, T]`` each."""
    gaps, norms = [], []
    for rvq, levels in ((ref.quantizer.rvq_first, range(1)), (ref.quantizer.rvq_rest, range(1, codes.shape[1]))):
        residual = rvq.input_proj(latent)[0].t()  # [T, D]
        for level, vq in zip(levels, rvq.vq.layers):
            centroids = vq._codebook.embedding
            two = torch.cdist(residual[None], centroids[None])[0].topk(2, largest=False).values
            gaps.append(two[:, 1] - two[:, 0])
            norms.append(residual.norm(dim=-1))
            residual = residual - centroids[codes[0, level]]
    return torch.stack(gaps), torch.stack(norms)


def _latent_error_bound(ref, latent_ours, latent_ref) -> torch.Tensor:
    """``[2, T]``: how far the projected latent error can move a distance, for the semantic and acoustic inputs."""
    delta = latent_ours - latent_ref
    return torch.stack([rvq.input_proj(delta)[0].norm(dim=0)
                        for rvq in (ref.quantizer.rvq_first, ref.quantizer.rvq_rest)])


def check_codes(ref, ours_codes, ref_codes, latent_ours, latent_ref) -> tuple[int, float]:
    """Assert that the first level where our codes part from the reference's (per step, per RVQ) is a
    near-tie the latent error can explain; returns (number of near-tie positions, agreement)."""
    with torch.no_grad():
        gaps, norms = _reference_distances(ref, latent_ref, ref_codes)
        bound = _latent_error_bound(ref, latent_ours, latent_ref)
    margin = 2 * torch.cat([bound[:1], bound[1:].expand(gaps.shape[0] - 1, -1)]) + ROUNDING_SLACK * norms
    near_tie = gaps <= margin
    differs = ours_codes[0] != ref_codes[0]
    for levels in (slice(0, 1), slice(1, None)):
        d = differs[levels]
        first = torch.where(d.any(0), d.float().argmax(0), -1)
        for step in torch.nonzero(first >= 0).flatten().tolist():
            level = levels.start + first[step].item()
            assert near_tie[level, step], (
                f"code differs at level {level}, step {step} with a clear reference gap "
                f"{gaps[level, step]:.3g} > margin {margin[level, step]:.3g}")
    agreement = 1.0 - differs.float().mean().item()
    assert agreement >= MIN_CODE_AGREEMENT, f"only {agreement:.4%} of codes agree"
    return int(near_tie.sum()), agreement


def _report(pair: Pair, what: str, **numbers) -> None:
    details = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in numbers.items())
    print(f"[{pair.name} Mimi, {pair.wav.shape[-1] / pair.ours.sample_rate:.1f} s] {what}: {details}")


def test_one_shot_matches_reference_offline(pair: Pair):
    ours = pair.ours_offline
    ref = pair.ref_offline
    latent_err = (ours.latent - ref.latent).abs().max().item()
    assert latent_err <= LATENT_TOL
    ties, agreement = check_codes(pair.ref, ours.codes, ref.codes, ours.latent, ref.latent)
    audio_err = (ours.audio - ref.audio).abs().max().item()
    assert ours.audio.shape == ref.audio.shape == pair.wav.shape
    assert audio_err <= AUDIO_TOL
    _report(pair, "one-shot", latent_err=latent_err, near_ties=ties,
            agreement=agreement, audio_err=audio_err, ours_s=ours.seconds, ref_s=ref.seconds)


def test_streaming_matches_reference_streaming(pair: Pair):
    ours = pair.ours_stream
    ref = pair.ref_stream
    latent_err = (ours.latent - ref.latent).abs().max().item()
    assert latent_err <= LATENT_TOL
    ties, agreement = check_codes(pair.ref, ours.codes, ref.codes, ours.latent, ref.latent)
    audio_err = (ours.audio - ref.audio).abs().max().item()
    assert audio_err <= AUDIO_TOL
    _report(pair, "streaming", latent_err=latent_err, near_ties=ties,
            agreement=agreement, audio_err=audio_err, ours_s=ours.seconds, ref_s=ref.seconds)


def test_streaming_equals_one_shot_within_context_and_departs_after(pair: Pair):
    """Up to ``context`` transformer steps, streaming == one-shot; after that the reference's streaming path
    departs from its offline path (2 steps written per frame before attending), and ours departs identically."""
    config = pair.ours.config
    within = config.transformer.context // config.resample_stride  # frames whose steps all fit in the context
    ours_stream, ours_offline = pair.ours_stream.latent, pair.ours_offline.latent
    assert (ours_stream[..., :within] - ours_offline[..., :within]).abs().max() <= LATENT_TOL
    ref_departure = pair.ref_stream.latent - pair.ref_offline.latent
    ours_departure = ours_stream - ours_offline
    assert ref_departure[..., within + 1 :].abs().max() > 3 * LATENT_TOL, "clip too short to show the ring quirk"
    assert (ours_departure - ref_departure).abs().max() <= LATENT_TOL


def test_encode_and_encode_step_quantize_the_latents(tiny_pair: Pair):
    ours = tiny_pair.ours
    assert torch.equal(ours.encode(tiny_pair.wav), tiny_pair.ours_offline.codes)
    state = ours.init_state(1)
    codes = torch.cat([ours.encode_step(f, state) for f in tiny_pair.wav.split(ours.frame_size, dim=-1)], dim=-1)
    assert torch.equal(codes, tiny_pair.ours_stream.codes)
    quantized = ours.encode_to_latent(tiny_pair.wav, quantize=True)
    assert (quantized - ours.decode_latent(tiny_pair.ours_offline.codes)).abs().max() == 0


def test_decode_any_number_of_codebooks(tiny_pair: Pair):
    codes = tiny_pair.ref_offline.codes
    for k in (1, 2, 8, codes.shape[1]):
        with torch.no_grad():
            expected = tiny_pair.ref.decode(codes[:, :k])
        assert (tiny_pair.ours.decode(codes[:, :k]) - expected).abs().max() <= AUDIO_TOL


def test_multi_frame_calls_match_reference_past_the_ring(tiny_pair: Pair):
    """n frames per call (2n transformer steps written before attending) follows the reference's streaming."""
    chunks = tiny_pair.wav.split(3 * tiny_pair.ours.frame_size, dim=-1)
    with torch.no_grad(), tiny_pair.ref.streaming(1):
        expected = torch.cat([tiny_pair.ref.encode_to_latent(c, quantize=False) for c in chunks], dim=-1)
    state = tiny_pair.ours.init_state(1)
    latent = torch.cat([tiny_pair.ours.encode_latent_step(c, state) for c in chunks], dim=-1)
    assert (latent - expected).abs().max() <= LATENT_TOL
    assert (expected - tiny_pair.ref_stream.latent).abs().max() > LATENT_TOL  # differs from frame by frame
