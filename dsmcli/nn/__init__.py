"""Building blocks shared by the Mimi transformer and the DSM language model."""

from dsmcli.nn.attention import attend, causal_attend, context_mask
from dsmcli.nn.kv_rings import EMPTY_POSITION, KVRings, RingStep
from dsmcli.nn.norms import LayerNormF32, NormKind, RMSNorm, make_norm
from dsmcli.nn.rope import apply_rope, rope_angles, rope_frequencies, rotate

__all__ = [
    "EMPTY_POSITION",
    "KVRings",
    "LayerNormF32",
    "NormKind",
    "RMSNorm",
    "RingStep",
    "apply_rope",
    "attend",
    "causal_attend",
    "context_mask",
    "make_norm",
    "rope_angles",
    "rope_frequencies",
    "rotate",
]
