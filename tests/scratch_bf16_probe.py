import torch
from test_lm_harness import encode_speech, reference_checkpoint, relative_error, run_our_stt, run_ref_stt
from dsmcli.engine import LM
import dsmcli.engine.kv_rings as kr
import dsmcli.nn.linear as nl
import torch.nn.functional as F

def test_probe(tiny_stt, bria_24k):
    torch.set_num_threads(1)
    info = reference_checkpoint(tiny_stt)
    codes = encode_speech(info.get_mimi(device="cpu"), bria_24k(8.0))
    ref = run_ref_stt(info.get_moshi(device="cpu", dtype=torch.bfloat16), codes)
    ours = LM.load(tiny_stt)
    def err():
        run = run_our_stt(ours, codes, forced=ref.tokens)
        return float(relative_error(run.logits, ref.logits).max())
    print("\nnew", err())
    orig_create = kr.KVRings.create.__func__
    kr.KVRings.create = classmethod(lambda cls, *a, **k: orig_create(cls, *a[:-1], static=True, **k) if len(a) == 9 else orig_create(cls, *a, **{**k, "static": True}))
    print("static span", err())
    orig_linear = nl.linear
    import dsmcli.engine.transformer as tr, dsmcli.nn.gating as g, dsmcli.engine.lm as lm
    for m in (tr, g, lm): m.linear = lambda x, w, b=None: F.linear(x, w, b)
    print("static + F.linear", err())
