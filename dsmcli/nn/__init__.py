"""Building blocks shared by the Mimi transformer and the DSM language model."""

from dsmcli.nn.attention import attend, causal_attend, context_mask
from dsmcli.nn.kv_cache import EMPTY_POSITION, RingKVCache
from dsmcli.nn.norms import LayerNormF32, NormKind, RMSNorm, make_norm
from dsmcli.nn.rope import apply_rope, rope_angles, rope_frequencies, rotate

__all__ = [
    "EMPTY_POSITION",
    "LayerNormF32",
    "NormKind",
    "RMSNorm",
    "RingKVCache",
    "apply_rope",
    "attend",
    "causal_attend",
    "context_mask",
    "make_norm",
    "rope_angles",
    "rope_frequencies",
    "rotate",
]
