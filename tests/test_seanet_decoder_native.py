"""The native streaming step of Mimi's SEANet decoder and of its transposed convs (``dsmcli/kernels/seanet_step.cpp``:
CONVTR, CONVTR_DW) against the layer-by-layer torch path (same audio up to float rounding over many steps, overlaps
carried, 1 or several latent steps per call), against the one-shot forward and the reference's streaming decode,
slots independent of their batch mates bit for bit (with resets and paused slots), and deterministic."""

from __future__ import annotations

import json

import pytest
import torch

import dsmcli.codec.conv as conv_module
import dsmcli.codec.seanet as seanet_module
from dsmcli.codec.config import SEANetConfig
from dsmcli.codec.conv import CONVTR, CONVTR_DEPTHWISE, CausalConvTranspose1d
from dsmcli.codec.seanet import ELU, SEANetDecoder
from dsmcli.kernels.codec import seanet_step_op
from dsmcli.hub.loaders import load_mimi

REL_TOL = 1e-5  # float sums in other orders through 14 convs and 4 transposed convs, relative to the largest output
REF_AUDIO_TOL = 1e-4  # the codec parity tests' audio tolerance (test_codec_parity.py)

needs_native = pytest.mark.skipif(seanet_step_op("auto") is None,
                                  reason="the native SEANet kernel cannot be built here")


def _must_not_run(choice, fits=True):
    """A stand-in for the op lookup: fails when asked for an op that fits (the native op would run)."""
    if fits:
        pytest.fail("the native op was called")

SMALL = SEANetConfig(dimension=24, n_filters=4, ratios=(4, 3, 2), n_residual_layers=2)  # hop 24, dilations 1, 2
RELEASED = SEANetConfig()  # 512-d latent, ratios (8, 6, 5, 4): 1920 samples per 2 latent steps


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) / (p[0].numel() ** 0.5) if p.dim() > 1 else 0.1 * torch.randn_like(p))
    return module.eval()


def _torch_path(monkeypatch) -> None:
    monkeypatch.setattr(seanet_module, "seanet_step_op", lambda *args: None)
    monkeypatch.setattr(conv_module, "seanet_step_op", lambda *args: None)


def _stream(module, chunks: list[torch.Tensor], native: bool, monkeypatch) -> torch.Tensor:
    if not native:
        _torch_path(monkeypatch)
    state = module.init_state(chunks[0].shape[0])
    with torch.no_grad():
        out = torch.cat([module.step(chunk, state) for chunk in chunks], dim=-1)
    monkeypatch.undo()
    return out


@needs_native
@pytest.mark.parametrize("config,steps_per_call,calls", [(SMALL, 1, 12), (SMALL, 3, 5), (RELEASED, 2, 5)])
def test_native_decoder_step_matches_torch_path_and_one_shot(config, steps_per_call, calls, monkeypatch):
    decoder = _randomize(SEANetDecoder(config), calls)
    plan = decoder._native_plan()
    assert plan is not None and plan.program.count(CONVTR) == len(config.ratios)
    z = torch.randn(2, config.dimension, steps_per_call * calls)
    chunks = list(z.split(steps_per_call, dim=-1))
    native = _stream(decoder, chunks, True, monkeypatch)
    torch_path = _stream(decoder, chunks, False, monkeypatch)
    assert native.shape == torch_path.shape == (2, 1, config.hop_length * steps_per_call * calls)
    scale = torch_path.abs().max()
    assert scale > 0 and (native - torch_path).abs().max() <= REL_TOL * scale
    with torch.no_grad():  # streaming from a fresh state equals the one-shot forward
        assert (native - decoder(z)).abs().max() <= REL_TOL * scale


@needs_native
@pytest.mark.parametrize("depthwise", [True, False])
def test_native_transposed_conv_step_matches_torch_path(depthwise, monkeypatch):
    channels = 16
    conv = _randomize(CausalConvTranspose1d(channels, channels if depthwise else 8, 4, 2,
                                            groups=channels if depthwise else 1, bias=not depthwise), 5)
    assert conv.native_code() == (CONVTR_DEPTHWISE if depthwise else CONVTR)
    chunks = list(torch.randn(3, channels, 14).split([1, 2, 5, 1, 3, 2], dim=-1))
    native = _stream(conv, chunks, True, monkeypatch)
    torch_path = _stream(conv, chunks, False, monkeypatch)
    assert native.shape == torch_path.shape == (3, conv.layer.out_channels, 28)
    assert (native - torch_path).abs().max() <= 1e-6 * torch_path.abs().max()
    with torch.no_grad():
        assert (native - conv(torch.cat(chunks, dim=-1))).abs().max() <= 1e-6 * torch_path.abs().max()


@needs_native
def test_native_decoder_slots_do_not_depend_on_batch_mates():
    decoder = _randomize(SEANetDecoder(SMALL), 1)
    torch.manual_seed(2)
    z = torch.randn(3, SMALL.dimension, 10)
    paused = {3: torch.tensor([True, True, False]), 4: torch.tensor([True, True, False])}
    batched = decoder.init_state(3)
    outs = []
    with torch.no_grad():
        for t, chunk in enumerate(z.split(1, dim=-1)):
            if t == 6:
                batched.reset(torch.tensor([False, True, False]))
            outs.append(decoder.step(chunk, batched, paused.get(t)))
        for slot in range(3):
            alone = decoder.init_state(1)
            for t, chunk in enumerate(z.split(1, dim=-1)):
                if slot == 2 and t in paused:
                    continue  # paused: its tails and overlaps must not have moved
                if slot == 1 and t == 6:
                    alone = decoder.init_state(1)
                assert torch.equal(decoder.step(chunk[slot : slot + 1], alone)[0], outs[t][slot]), (slot, t)


@needs_native
def test_native_decoder_step_is_deterministic():
    """Same input, same bits, whatever the heap looks like (BLAS rounds by operand alignment: buffers are aligned)."""
    decoder = _randomize(SEANetDecoder(RELEASED), 4)
    z = torch.randn(1, RELEASED.dimension, 2)
    with torch.no_grad():
        state = decoder.init_state(1)
        first = [decoder.step(z, state), decoder.step(-z, state)]
        for size in (1, 3, 17, 1000):
            clutter = [torch.empty(size * 7) for _ in range(5)]  # move the allocator around
            state = decoder.init_state(1)
            assert torch.equal(decoder.step(z, state), first[0]) and torch.equal(decoder.step(-z, state), first[1])
            del clutter


def test_program_covers_the_decoder_and_falls_back_outside_it(monkeypatch):
    decoder = SEANetDecoder(SMALL)
    plan = decoder._native_plan()
    assert plan is not None and plan.program[1] == ELU and plan.program[2] == CONVTR
    assert SEANetDecoder(SEANetConfig(**{**SMALL.__dict__, "true_skip": False}))._native_plan() is None
    monkeypatch.setattr(seanet_module, "seanet_step_op", _must_not_run)
    monkeypatch.setattr(conv_module, "seanet_step_op", _must_not_run)
    with torch.no_grad():  # float64: not a native dtype
        decoder = decoder.double()
        assert decoder.step(torch.randn(1, SMALL.dimension, 2).double(), decoder.init_state(1)).shape == (1, 1, 48)


@needs_native
def test_native_streaming_decode_matches_the_reference(fixture_dir, tiny_stt, monkeypatch):
    """Mimi's whole streaming decode (upsample, transformer, SEANet decoder natively) against the reference's."""
    from fixturelib.repos import MIMI_CONFIG_NAME, STT_MIMI_NAME
    from make_fixtures import load_ref_mimi

    repo = fixture_dir / "tiny-stt"
    config = json.loads((repo / MIMI_CONFIG_NAME).read_text())
    ref = load_ref_mimi(repo / STT_MIMI_NAME, config, num_codebooks=config["quantizer"]["n_q"])
    ours = load_mimi(tiny_stt)
    torch.manual_seed(3)
    codes = torch.randint(0, ours.cardinality, (1, ours.total_codebooks, 30))
    calls = []

    def counted(choice, fits=True):
        return (lambda *a: calls.append(1) or seanet_step_op(choice)(*a)) if fits else None

    monkeypatch.setattr(seanet_module, "seanet_step_op", counted)
    state = ours.init_state(1)
    audio = torch.cat([ours.decode_step(codes[..., t : t + 1], state) for t in range(codes.shape[-1])], dim=-1)
    assert len(calls) == codes.shape[-1]  # the SEANet decoder ran natively
    with torch.no_grad(), ref.streaming(1):
        expected = torch.cat([ref.decode(codes[..., t : t + 1]) for t in range(codes.shape[-1])], dim=-1)
    assert audio.shape == expected.shape
    assert (audio - expected).abs().max() <= REF_AUDIO_TOL
