"""The Mimi codec: 24 kHz audio ↔ 12.5 Hz codes (FORMAT.md §2.8), one-shot and streaming.

Encoding: SEANet encoder (25 Hz) → encoder transformer → learnt stride-2 conv (12.5 Hz) → split RVQ.
Decoding mirrors it with a depthwise transposed conv back to 25 Hz. Streaming state is an explicit
:class:`MimiState` the caller holds (one per batch of streams); slots reset independently and an
``active`` mask freezes the state of slots that skip a step.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsmcli.codec.checkpoint import released_names
from dsmcli.codec.config import MimiConfig, PadMode
from dsmcli.codec.conv import (
    CausalConv1d,
    CausalConvTranspose1d,
    ConvState,
    ConvTrState,
    nested,
)
from dsmcli.codec.options import CodecOptions
from dsmcli.codec.quantizer import ResidualVQ, SplitQuantizer
from dsmcli.codec.seanet import LayerStates, SEANetDecoder, SEANetEncoder
from dsmcli.codec.transformer import MimiTransformer, SelfAttention, TransformerLayer, TransformerState
from dsmcli.nn.state import assign_state, cast_floats


# the modules whose steps look up native kernels: each holds the choice as its ``kernels`` attribute
KERNEL_USERS = (CausalConv1d, CausalConvTranspose1d, SEANetEncoder, SEANetDecoder, MimiTransformer, SelfAttention,
                TransformerLayer, ResidualVQ)


@dataclass
class EncoderState:
    seanet: LayerStates
    transformer: TransformerState
    downsample: ConvState | None

    def reset(self, mask: Tensor) -> None:
        self.seanet.reset(mask)
        self.transformer.reset(mask)
        if self.downsample is not None:
            self.downsample.reset(mask)


@dataclass
class DecoderState:
    upsample: ConvTrState | None
    transformer: TransformerState
    seanet: LayerStates

    def reset(self, mask: Tensor) -> None:
        if self.upsample is not None:
            self.upsample.reset(mask)
        self.transformer.reset(mask)
        self.seanet.reset(mask)


@dataclass
class MimiState:
    """Streaming state of ``batch_size`` independent streams (encoder and decoder parts)."""

    batch_size: int
    encoder: EncoderState | None  # None when the codec was built without its encoder (decode only)
    decoder: DecoderState

    def reset(self, mask: Tensor) -> None:
        """Restart the slots selected by ``mask`` ``[B]`` (bool) from a fresh state."""
        if self.encoder is not None:
            self.encoder.reset(mask)
        self.decoder.reset(mask)


class Mimi(nn.Module):
    """Mimi codec. Audio is ``[B, channels, N]`` float at :attr:`sample_rate`; codes are ``[B, K, T]`` int64."""

    def __init__(self, config: MimiConfig | None = None, num_codebooks: int | None = None,
                 options: CodecOptions | None = None):
        """``num_codebooks``: codes per frame that ``encode`` / ``encode_step`` produce (1..n_q; default all);
        ``options``: how it runs (:class:`~dsmcli.codec.options.CodecOptions`: the native kernels)."""
        super().__init__()
        self.config = config = config or MimiConfig()
        self.options = CodecOptions() if options is None else options
        self.encoder = SEANetEncoder(config.seanet)
        self.decoder = SEANetDecoder(config.seanet)
        self.encoder_transformer = MimiTransformer(config.transformer)
        self.decoder_transformer = MimiTransformer(config.transformer)
        self.quantizer = SplitQuantizer(config.quantizer)
        stride, dim = config.resample_stride, config.seanet.dimension
        if stride > 1:  # module nesting mirrors `downsample.conv.conv.conv.weight`
            self.downsample = nested("conv", CausalConv1d(dim, dim, 2 * stride, stride, bias=False,
                                                          pad_mode=PadMode.REPLICATE))
            self.upsample = nested("convtr", CausalConvTranspose1d(dim, dim, 2 * stride, stride, groups=dim,
                                                                   bias=False))
        self.num_codebooks = config.codebooks(num_codebooks)
        self.has_encoder = True
        for module in self.modules():  # every part with a native path runs under the options' choice
            if isinstance(module, KERNEL_USERS):
                module.kernels = self.options.kernels

    def drop_encoder(self) -> None:
        """Free the encoder half (SEANet encoder, encoder transformer, downsampling conv; about half of
        Mimi's weights) and the codebooks' float sums (decoding reads the centroid tables built from them) for
        decode-only uses such as embedding-voice TTS. Any later encode raises a RuntimeError saying so; reload
        the codec to encode again."""
        if not self.has_encoder:
            return
        del self.encoder, self.encoder_transformer
        if self.config.resample_stride > 1:
            del self.downsample
        for rvq in (self.quantizer.rvq_first, self.quantizer.rvq_rest):
            rvq.free_codebook_sums()  # decoding reads the centroid tables only: a second copy of the codebooks
        self.has_encoder = False

    def _require_encoder(self) -> None:
        if not self.has_encoder:
            raise RuntimeError("this Mimi was loaded decode-only (drop_encoder): it cannot encode audio; "
                               "reload it with dsmcli.hub.loaders.load_mimi to encode")

    @classmethod
    def from_state(cls, state: dict[str, Tensor], config: MimiConfig | None = None,
                   dtype: torch.dtype = torch.float32, source: str = "Mimi weights",
                   num_codebooks: int | None = None, options: CodecOptions | None = None) -> Mimi:
        """Build on the meta device and assign ``state`` strictly (released names or their aliases, see
        :mod:`dsmcli.codec.checkpoint`), floating tensors cast to ``dtype``; eval mode, no gradients. Reading the
        file is :func:`dsmcli.hub.loaders.load_mimi`'s job."""
        with torch.device("meta"):
            model = cls(config, num_codebooks, options)
        assign_state(model, cast_floats(released_names(state), lambda _key: dtype), source)
        return model.eval().requires_grad_(False)

    # ------------------------------------------------------------------ properties

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def frame_rate(self) -> Fraction:
        return self.config.frame_rate

    @property
    def frame_size(self) -> int:
        return self.config.frame_size

    @property
    def channels(self) -> int:
        return self.config.channels

    @property
    def total_codebooks(self) -> int:
        return self.config.quantizer.n_q

    @property
    def cardinality(self) -> int:
        return self.config.quantizer.bins

    # ------------------------------------------------------------------ one shot

    @torch.no_grad()
    def encode_to_latent(self, wav: Tensor, quantize: bool = False) -> Tensor:
        """``[B, C, N]`` → latent ``[B, dim, ceil(N / frame_size)]`` at the frame rate.

        Unquantized (what voice embeddings are made of) unless ``quantize``. The input is right-padded
        with zeros to a whole number of frames.
        """
        self._require_encoder()
        wav = F.pad(wav, (0, -wav.shape[-1] % self.frame_size))
        latent = self.encoder_transformer(self.encoder(wav))
        if self.config.resample_stride > 1:
            latent = self.downsample.conv(latent)
        if quantize:
            return self.quantizer.decode(self.quantizer.encode(latent, self.num_codebooks))
        return latent

    @torch.no_grad()
    def encode(self, wav: Tensor) -> Tensor:
        """``[B, C, N]`` → codes ``[B, num_codebooks, ceil(N / frame_size)]``."""
        return self.quantizer.encode(self.encode_to_latent(wav), self.num_codebooks)

    @torch.no_grad()
    def decode_latent(self, codes: Tensor) -> Tensor:
        """codes ``[B, K, T]`` → quantized latent ``[B, dim, T]``."""
        return self.quantizer.decode(codes)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """codes ``[B, K, T]`` (any ``1 <= K <= total_codebooks``) → audio ``[B, C, T * frame_size]``, not clipped."""
        latent = self.quantizer.decode(codes)
        if self.config.resample_stride > 1:
            latent = self.upsample.convtr(latent)
        return self.decoder(self.decoder_transformer(latent))

    # ------------------------------------------------------------------ streaming

    def init_state(self, batch_size: int) -> MimiState:
        """A fresh streaming state for ``batch_size`` independent streams."""
        resampled = self.config.resample_stride > 1
        encoder = EncoderState(
            self.encoder.init_state(batch_size),
            self.encoder_transformer.init_state(batch_size),
            self.downsample.conv.init_state(batch_size) if resampled else None,
        ) if self.has_encoder else None
        decoder = DecoderState(
            self.upsample.convtr.init_state(batch_size) if resampled else None,
            self.decoder_transformer.init_state(batch_size),
            self.decoder.init_state(batch_size),
        )
        return MimiState(batch_size, encoder, decoder)

    def _check_batch(self, x: Tensor, state: MimiState, active: Tensor | None) -> None:
        if x.shape[0] != state.batch_size:
            raise ValueError(f"batch of {x.shape[0]} streams, but the state was made for {state.batch_size}")
        if active is not None and active.shape != (state.batch_size,):
            raise ValueError(f"active mask must have shape ({state.batch_size},), got {tuple(active.shape)}")

    @torch.no_grad()
    def encode_latent_step(self, frames: Tensor, state: MimiState, active: Tensor | None = None) -> Tensor:
        """Streaming: ``[B, C, n * frame_size]`` → unquantized latent ``[B, dim, n]``.

        The caller buffers partial frames: a length that is not a positive multiple of
        ``frame_size`` is a ValueError. Slots with ``active`` False keep their state.
        """
        if frames.shape[-1] == 0 or frames.shape[-1] % self.frame_size:
            raise ValueError(f"streaming encode needs a positive multiple of {self.frame_size} samples, "
                             f"got {frames.shape[-1]}: buffer partial frames")
        self._require_encoder()
        self._check_batch(frames, state, active)
        enc = state.encoder
        if enc is None:
            raise ValueError("this streaming state was made without an encoder part: it cannot encode")
        latent = self.encoder.step(frames, enc.seanet, active)
        latent = self.encoder_transformer.step(latent, enc.transformer, active)
        if enc.downsample is not None:
            latent = self.downsample.conv.step(latent, enc.downsample, active)
        return latent

    @torch.no_grad()
    def encode_step(self, frames: Tensor, state: MimiState, active: Tensor | None = None) -> Tensor:
        """Streaming: ``[B, C, n * frame_size]`` → codes ``[B, num_codebooks, n]``."""
        return self.quantizer.encode(self.encode_latent_step(frames, state, active), self.num_codebooks)

    @torch.no_grad()
    def decode_step(self, codes: Tensor, state: MimiState, active: Tensor | None = None) -> Tensor:
        """Streaming: codes ``[B, K, n]`` → audio ``[B, C, n * frame_size]``; inactive slots keep their state."""
        self._check_batch(codes, state, active)
        dec = state.decoder
        latent = self.quantizer.decode(codes)
        if dec.upsample is not None:
            latent = self.upsample.convtr.step(latent, dec.upsample, active)
        latent = self.decoder_transformer.step(latent, dec.transformer, active)
        return self.decoder.step(latent, dec.seanet, active)
