"""The test plumbing (conftest) and the reference fixtures (tools/make_fixtures.py).

The tiny repos must load through the reference exactly as the released checkpoints do: offline
from a Hugging Face cache, strict state-dict loads, released file names and tensor names.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import make_fixtures
import numpy as np
import pytest
import torch
from conftest import TOOLS_DIR, subprocess_env
from fixturelib import repos

from dsmcli.constants import FRAME_RATE, FRAME_SIZE, SAMPLE_RATE

LM_REPOS = ("tiny-stt", "tiny-stt-prefix", "tiny-tts", "tiny-tts-prefix")
TINY_TTS_N_Q = 8
MIN_TOKEN_SHARE = 0.05  # each of EPAD / PAD / word pieces in greedy STT decoding of real speech


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _checkpoint(repo_id: str):
    from moshi.models import loaders

    return loaders.CheckpointInfo.from_hf_repo(repo_id)


def _file_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


# --------------------------------------------------------------------------- plumbing


def test_environment_is_offline_and_private(hf_cache):
    from huggingface_hub import constants

    assert os.environ["HF_HUB_OFFLINE"] == "1" and constants.HF_HUB_OFFLINE
    assert os.environ["NO_TORCH_COMPILE"] == "1"
    assert Path(constants.HF_HUB_CACHE) == hf_cache
    assert not str(hf_cache).startswith(os.path.expanduser("~/.cache"))
    assert subprocess_env()["HF_HUB_CACHE"] == str(hf_cache)


def test_subprocesses_see_the_session_cache_offline(tiny_stt, hf_cache):
    code = (
        "from huggingface_hub import constants, hf_hub_download; "
        f"print(constants.HF_HUB_OFFLINE, hf_hub_download({tiny_stt!r}, 'config.json'))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    offline, path = proc.stdout.split()
    assert offline == "True" and path.startswith(str(hf_cache))


def test_bria_24k_decodes_and_caches(bria_24k):
    a, b = bria_24k(2.0), bria_24k(2.0)
    assert a.dtype == np.float32 and a.shape == (2 * SAMPLE_RATE,)
    assert np.array_equal(a, b) and a is not b
    a[:] = 0  # callers own their copy
    assert np.abs(bria_24k(2.0)).max() > 0.05
    assert 40 * SAMPLE_RATE < len(bria_24k()) < 50 * SAMPLE_RATE


def test_install_into_hf_cache_layout(fixture_dir, tmp_path):
    from huggingface_hub import hf_hub_download

    snapshot = make_fixtures.install_into_hf_cache(fixture_dir / "tiny-voices", tmp_path, "someone/voices")
    again = make_fixtures.install_into_hf_cache(fixture_dir / "tiny-voices", tmp_path, "someone/voices")
    root = tmp_path / "models--someone--voices"
    assert snapshot == again and (root / "refs" / "main").read_text() == snapshot.name
    link = snapshot / "voices" / "alice.wav"
    assert link.is_symlink() and link.resolve().parent == (root / "blobs").resolve()
    found = hf_hub_download("someone/voices", "voices/alice.wav", cache_dir=tmp_path)
    assert Path(found).read_bytes() == (fixture_dir / "tiny-voices" / "voices" / "alice.wav").read_bytes()


# --------------------------------------------------------------------------- released layout


@pytest.mark.parametrize("name", LM_REPOS)
def test_repo_files_are_exactly_those_config_names(fixture_dir, name):
    config = json.loads((fixture_dir / name / "config.json").read_text())
    named = {config[k] for k in ("moshi_name", "mimi_name", "mimi_config_name", "tokenizer_name")}
    assert {p.name for p in (fixture_dir / name).iterdir()} == named | {"config.json"}
    assert config["text_card"] == repos.TEXT_VOCAB
    assert len(config["delays"]) == config["n_q"] + 1


def test_tokenizer_has_kyutai_special_ids(fixture_dir):
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(str(fixture_dir / "tiny-stt" / "tokenizer_en_fr_audio_8000.model"))
    assert sp.vocab_size() == repos.TEXT_VOCAB
    assert [sp.id_to_piece(i) for i in range(4)] == ["<unk>", "<s>", "</s>", "<pad>"]
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, 3)
    assert sp.decode(sp.encode("Bonjour, this is a test.")) == "Bonjour, this is a test."


def test_mimi_file_uses_released_names_and_loads_strictly(tiny_stt):
    info = _checkpoint(tiny_stt)
    state = _file_state(info.mimi_weights)
    assert len(state) == 198 and all(v.dtype == torch.float32 for v in state.values())
    assert "encoder_transformer.transformer.layers.1.self_attn.in_proj_weight" in state
    assert "decoder_transformer.transformer.layers.0.self_attn.out_proj.weight" in state
    assert not [k for k in state if "in_projs" in k or "out_projs" in k]
    mimi = info.get_mimi()
    loaded = mimi.state_dict()
    assert torch.equal(
        loaded["quantizer.rvq_rest.vq.layers.3._codebook.embedding_sum"],
        state["quantizer.rvq_rest.vq.layers.3._codebook.embedding_sum"],
    )
    assert mimi.num_codebooks == 32 and info.mimi_config == make_fixtures.tiny_mimi_config()
    for key, value in loaded.items():  # perturbed: nothing left at its init value
        if key.endswith(("norm1.weight", "layer_scale_1.scale", "cluster_usage")):
            assert not torch.allclose(value, torch.full_like(value, value.flatten()[0].item())), key


@pytest.mark.parametrize("name", LM_REPOS)
def test_reference_loads_lm_repo_from_hf_cache(hf_cache, name):
    info = _checkpoint(make_fixtures.repo_id(name))
    assert info.model_type == json.loads(Path(info.moshi_weights).with_name("config.json").read_text())["model_type"]
    assert "moshi_name" not in info.lm_config and "stt_config" not in info.lm_config
    file_state = _file_state(info.moshi_weights)
    lm = info.get_moshi(dtype=torch.float32)
    assert not [k for k in file_state if ".self_attn.in_projs." in k and not k.startswith("depformer.")]
    for key, value in file_state.items():
        fp32 = key.startswith(("condition_provider.", "fuser."))
        assert value.dtype == (torch.float32 if fp32 else torch.bfloat16), key
    loaded = lm.state_dict()
    assert torch.equal(
        loaded["transformer.layers.0.self_attn.in_projs.0.weight"],
        file_state["transformer.layers.0.self_attn.in_proj_weight"].float(),
    )
    alphas = [v for k, v in loaded.items() if k.endswith(".alpha")]
    assert alphas and all(a.std() > 0.05 for a in alphas)  # perturbed RMSNorm gains


def test_stt_configs_match_released_shapes(tiny_stt, tiny_stt_prefix):
    stt, prefix = _checkpoint(tiny_stt), _checkpoint(tiny_stt_prefix)
    assert stt.stt_config == {"audio_delay_seconds": 0.5, "audio_silence_prefix_seconds": 0.0}
    assert prefix.stt_config == {"audio_delay_seconds": 2.5, "audio_silence_prefix_seconds": 1.0}
    assert stt.lm_gen_config == repos.STT_LM_GEN
    lm = stt.get_moshi(dtype=torch.float32)
    assert lm.dep_q == 0 and lm.n_q == 32 and len(lm.extra_heads) == 4 and lm.fuser is None
    assert lm.transformer.layers[0].self_attn.context == 40
    assert len(prefix.get_moshi(dtype=torch.float32).extra_heads) == 0


# --------------------------------------------------------------------------- depformer packing


def test_packed_and_split_depformer_load_identically(fixture_dir, tmp_path):
    config = json.loads((fixture_dir / "tiny-tts" / "config.json").read_text())
    lm_kwargs = repos.lm_part(config)
    model = make_fixtures.build_ref_lm(lm_kwargs, make_fixtures.SEEDS["tiny-tts"])
    packed = make_fixtures.save_lm(model, tmp_path / "packed.safetensors")
    split = make_fixtures.save_lm(model, tmp_path / "split.safetensors", packed_depformer=False)
    # build_ref_lm is deterministic: the packed file is the released repo file, byte for byte
    assert packed.read_bytes() == (fixture_dir / "tiny-tts" / config["moshi_name"]).read_bytes()
    packed_state, split_state = _file_state(packed), _file_state(split)
    mult = max(config["depformer_weights_per_step_schedule"]) + 1
    dim = config["depformer_dim"]
    assert packed_state["depformer.layers.1.self_attn.in_proj_weight"].shape == (mult * 3 * dim, dim)
    assert packed_state["depformer.layers.1.self_attn.out_proj.weight"].shape == (mult * dim, dim)
    assert split_state["depformer.layers.1.self_attn.in_projs.4.weight"].shape == (3 * dim, dim)
    assert len(split_state) == len(packed_state) + 2 * config["depformer_num_layers"] * (mult - 1)
    reference = model.state_dict()
    for path in (packed, split):
        loaded = make_fixtures.load_ref_lm(path, lm_kwargs).state_dict()
        assert loaded.keys() == reference.keys()
        assert all(torch.equal(loaded[k], reference[k]) for k in reference), path.name


# --------------------------------------------------------------------------- reference behaviour


def _greedy_stt_tokens(repo_id: str, wav: np.ndarray) -> list[int]:
    from moshi.models import LMGen

    info = _checkpoint(repo_id)
    mimi, lm = info.get_mimi(), info.get_moshi(dtype=torch.float32)
    gen = LMGen(lm, temp=0, temp_text=0)
    tokens = []
    with torch.no_grad(), mimi.streaming(1), gen.streaming(1):
        for start in range(0, len(wav), FRAME_SIZE):
            codes = mimi.encode(torch.from_numpy(wav[start : start + FRAME_SIZE])[None, None])
            tokens.append(gen.step(codes)[0, 0, 0].item())
    return tokens


@pytest.mark.parametrize("name", ["tiny-stt", "tiny-stt-prefix"])
def test_greedy_reference_stt_emits_pads_boundaries_and_words(hf_cache, bria_24k, name):
    tokens = _greedy_stt_tokens(make_fixtures.repo_id(name), bria_24k(10.0))
    assert len(tokens) == int(10 * FRAME_RATE)
    counts = Counter(tokens)
    words = sum(n for tok, n in counts.items() if tok > repos.PAD_ID)
    shares = {"epad": counts[0] / len(tokens), "pad": counts[repos.PAD_ID] / len(tokens), "word": words / len(tokens)}
    assert min(shares.values()) >= MIN_TOKEN_SHARE, shares
    assert max(tokens) < repos.TEXT_VOCAB


def test_voices_are_tiny_mimi_latents_of_the_wavs(tiny_voices, tiny_stt):
    import soundfile
    from huggingface_hub import hf_hub_download
    from safetensors import safe_open

    mimi = _checkpoint(tiny_stt).get_mimi()
    for name in make_fixtures.VOICES:
        wav, rate = soundfile.read(hf_hub_download(tiny_voices, f"voices/{name}.wav"), dtype="float32")
        assert rate == SAMPLE_RATE and wav.shape == (int(make_fixtures.VOICE_SECONDS * SAMPLE_RATE),)
        with safe_open(hf_hub_download(tiny_voices, f"voices/{name}.wav.1e68beda@240.safetensors"), "pt") as f:
            assert f.metadata() == {"sig": "1e68beda", "epoch": "240"} and list(f.keys()) == ["speaker_wavs"]
            emb = f.get_tensor("speaker_wavs")
        assert emb.dtype == torch.float32 and emb.shape == (1, 32, 125)
        with torch.no_grad():
            latent = mimi.encode_to_latent(torch.from_numpy(wav)[None, None], quantize=False)
        torch.testing.assert_close(latent, emb, rtol=1e-4, atol=1e-6)


def test_reference_tts_generates_with_voice_embedding(tiny_tts, tiny_voices):
    from moshi.models.tts import TTSModel

    info = _checkpoint(tiny_tts)
    tts = TTSModel.from_checkpoint_info(info, n_q=TINY_TTS_N_Q, voice_repo=tiny_voices, dtype=torch.float32)
    assert tts.multi_speaker and tts.valid_cfg_conditionings == {1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0}
    assert tts.delay_steps == 16 and tts.machine.second_stream_ahead == 2
    entries = tts.prepare_script(["Hello world, this is a test."], padding_between=1)
    voices = [tts.get_voice_path(f"voices/{name}.wav") for name in make_fixtures.VOICES]
    attributes = [tts.make_condition_attributes(voices, cfg_coef=2.0)]
    torch.manual_seed(0)
    result = tts.generate([entries], attributes)
    assert [word for word, _ in result.all_transcripts[0]] == ["Hello", "world,", "this", "is", "a", "test."]
    assert result.end_steps[0] is not None
    audio = torch.cat(result.frames[tts.delay_steps :], dim=-1)[:, 1:]  # [1, 8, T]
    assert audio.shape[1] == TINY_TTS_N_Q and audio.min() >= 0 and audio.max() < 64
    with torch.no_grad():
        pcm = tts.mimi.decode(audio)
    assert pcm.shape[-1] == audio.shape[-1] * FRAME_SIZE and torch.isfinite(pcm).all()


def test_reference_tts_generates_with_audio_prefix(tiny_tts_prefix, tiny_voices):
    from huggingface_hub import hf_hub_download
    from moshi.models.tts import TTSModel

    info = _checkpoint(tiny_tts_prefix)
    tts = TTSModel.from_checkpoint_info(info, n_q=TINY_TTS_N_Q, cfg_coef=2.0, dtype=torch.float32)
    assert not tts.multi_speaker and not tts.valid_cfg_conditionings and tts.voice_suffix == ""
    assert tts.lm.text_linear.out_features == 5
    prefix = tts.get_prefix(Path(hf_hub_download(tiny_voices, "voices/alice.wav")))  # [1 + 8, T - 2]
    assert prefix.shape == (1 + TINY_TTS_N_Q, int(make_fixtures.VOICE_SECONDS * FRAME_RATE) - 2)
    entries = tts.prepare_script(["Hello world."], padding_between=1)
    torch.manual_seed(0)
    result = tts.generate([entries], [], prefixes=[prefix])
    assert result.end_steps[0] is not None and result.end_steps[0] > prefix.shape[1]
    frames = torch.cat(result.frames, dim=-1)[0]  # [1 + 8, T]: frame t holds audio of time t - delay
    forced = frames[1:, tts.delay_steps : tts.delay_steps + prefix.shape[1]]
    assert torch.equal(forced, prefix[1:])


# --------------------------------------------------------------------------- reproducibility


def test_generation_is_bit_reproducible(fixture_dir):
    proc = subprocess.run(
        [sys.executable, str(TOOLS_DIR / "make_fixtures.py"), str(fixture_dir), "--check"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "reproducible" in proc.stdout


@pytest.mark.slow
def test_real_size_mimi_matches_the_released_file(real_mimi_path):
    from moshi.models import loaders

    # The released tokenizer-e351c8d8-checkpoint125.safetensors is 384,644,900 bytes, 318 F32 tensors.
    assert real_mimi_path.name == "tokenizer-e351c8d8-checkpoint125.safetensors"
    assert real_mimi_path.stat().st_size == 384_644_900
    state = _file_state(real_mimi_path)
    assert len(state) == 318 and all(v.dtype == torch.float32 for v in state.values())
    mimi = loaders.get_mimi(real_mimi_path, None, num_codebooks=32)
    codebook = mimi.quantizer.rvq_first.vq.layers[0]._codebook
    assert codebook.embedding.abs().sum() > 0 and codebook.cluster_usage.std() > 0.1
