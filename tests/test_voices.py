"""Voice resolution (repo / local / hf:// / traversal / unknown), embeddings, conditioning, prefixes, listing.

The voices repo is a fake one written into a temporary Hugging Face cache, read with HF_HUB_OFFLINE.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

os.environ.setdefault("NO_TORCH_COMPILE", "1")

from safetensors.torch import save_file  # noqa: E402

from dsmcli.constants import SAMPLE_RATE  # noqa: E402
from dsmcli.errors import InputError, ModelLoadError  # noqa: E402
from dsmcli.hub.checkpoint import Checkpoint  # noqa: E402
from dsmcli.hub.files import ModelSource  # noqa: E402
from dsmcli.tts.tokens import TtsTokenIds  # noqa: E402
from dsmcli.tts.voices import (  # noqa: E402
    ResolvedVoice,
    VoiceKind,
    VoiceMismatchWarning,
    VoiceSetup,
    build_audio_prefix,
    build_speaker_condition,
    list_voices,
    load_voice_embedding,
    resolve_voice,
    voice_model_tag,
)

DIM, FRAMES = 16, 10  # the released voices are [1, 512, 125]
SIG, EPOCH = "1e68beda", 240
SUFFIX = f".{SIG}@{EPOCH}.safetensors"
VOICES_REPO = "kyutai/tts-voices"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
HAPPY = "expresso/ex03-ex01_happy_001_channel1_334s.wav"


def write_voice(path: Path, seed: int = 0, dim: int = DIM, frames: int = FRAMES, sig: str = SIG,
                epoch: int = EPOCH, key: str = "speaker_wavs") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensor = torch.randn(1, dim, frames, generator=torch.Generator().manual_seed(seed))
    save_file({key: tensor}, str(path), metadata={"sig": sig, "epoch": str(epoch)})
    return path


def write_wav(path: Path, seconds: float = 0.5) -> Path:
    import soundfile

    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), np.zeros(int(SAMPLE_RATE * seconds), dtype=np.float32), SAMPLE_RATE)
    return path


@pytest.fixture
def voices_cache(tmp_path, monkeypatch) -> Path:
    """An offline HF cache holding a fake kyutai/tts-voices snapshot; returns the snapshot dir."""
    from huggingface_hub import constants

    hub = tmp_path / "hf" / "hub"
    repo_dir = hub / f"models--{VOICES_REPO.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / COMMIT
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)
    write_voice(snapshot / (HAPPY + SUFFIX), seed=1)
    write_wav(snapshot / HAPPY)
    write_voice(snapshot / ("vctk/p225_023.wav" + SUFFIX), seed=2)
    write_voice(snapshot / "vctk/p225_023.wav.d6ef30c7@1000.safetensors", seed=3, sig="d6ef30c7", epoch=1000)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return snapshot


def tts_checkpoint(name: str = "tts-1.6b-en_fr", voice_conditioner: bool = True, model_id: bool = True):
    raw: dict = {"model_type": "tts", "text_card": 8000, "dim": 64,
                 "tts_config": {"audio_delay": 1.28, "second_stream_ahead": 2}}
    if voice_conditioner:
        raw["conditioners"] = {"speaker_wavs": {"type": "tensor", "tensor": {"dim": DIM}},
                               "control": {"type": "lut", "lut": {"n_bins": 1, "dim": 8, "possible_values": ["ok"]}}}
    if model_id:
        raw["model_id"] = {"sig": SIG, "epoch": EPOCH}
    return Checkpoint.from_config(ModelSource(name=name, repo=f"kyutai/{name}"), raw)


@pytest.fixture
def setup_16b(voices_cache) -> VoiceSetup:
    return VoiceSetup.from_checkpoint(tts_checkpoint())


@pytest.fixture
def setup_075b(voices_cache) -> VoiceSetup:
    return VoiceSetup.from_checkpoint(tts_checkpoint("tts-0.75b-en-public", voice_conditioner=False))


def test_setup_from_checkpoints(setup_16b, setup_075b):
    assert setup_16b.kind is VoiceKind.EMBEDDING and setup_16b.multi_speaker
    assert setup_16b.suffix == SUFFIX and setup_16b.embedding_dim == DIM and setup_16b.max_speakers == 5
    assert setup_16b.voices.repo == VOICES_REPO
    assert voice_model_tag(setup_16b) == f"{SIG}@{EPOCH}"
    assert setup_075b.kind is VoiceKind.AUDIO_PREFIX and not setup_075b.multi_speaker
    assert setup_075b.suffix == "" and voice_model_tag(setup_075b) is None
    with pytest.raises(ModelLoadError, match="model_id"):
        VoiceSetup.from_checkpoint(tts_checkpoint(model_id=False))


def test_repo_voice_from_offline_cache(setup_16b, voices_cache):
    voice = resolve_voice(HAPPY, setup_16b)
    assert voice == ResolvedVoice(HAPPY, VoiceKind.EMBEDDING, voices_cache / (HAPPY + SUFFIX))
    embedding = load_voice_embedding(voice.path, setup_16b)
    assert embedding.tensor.shape == (1, DIM, FRAMES) and embedding.tensor.dtype == torch.float32
    assert (embedding.sig, embedding.epoch) == (SIG, str(EPOCH))
    same = resolve_voice(f"hf://{VOICES_REPO}/{HAPPY}", setup_16b)
    assert same.path == voice.path
    explicit = resolve_voice(HAPPY + SUFFIX, setup_16b)
    assert explicit.path == voice.path
    with pytest.raises(InputError, match="hf://owner/repo/path"):
        resolve_voice("hf://kyutai/tts-voices", setup_16b)


def test_unknown_voice(setup_16b):
    with pytest.raises(InputError, match="unknown voice expresso/nobody.wav"):
        resolve_voice("expresso/nobody.wav", setup_16b)


def test_voice_missing_on_the_hub_is_unknown(setup_16b, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import EntryNotFoundError

    def missing(repo, filename, revision=None):
        raise EntryNotFoundError(f"{filename} not found")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", missing)
    with pytest.raises(InputError, match="unknown voice"):
        resolve_voice("expresso/typo.wav", setup_16b)


def test_uncached_voices_repo_offline_stays_a_model_error(tmp_path, monkeypatch, voices_cache):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    setup = VoiceSetup.from_checkpoint(tts_checkpoint())
    with pytest.raises(ModelLoadError):
        resolve_voice(HAPPY, setup)


@pytest.mark.parametrize("voice", ["../secret.wav", "expresso/../../x.wav", "..\\x.wav", "C:\\voices\\x.wav"])
def test_traversal_refused(setup_16b, voice):
    with pytest.raises(InputError, match="inside the repo"):
        resolve_voice(voice, setup_16b)


def test_absolute_path_not_found(setup_16b, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        resolve_voice(str(tmp_path / "nowhere.wav"), setup_16b)


def test_local_files(setup_16b, tmp_path):
    emb = write_voice(tmp_path / "mine.safetensors")
    assert resolve_voice(str(emb), setup_16b) == ResolvedVoice(str(emb), VoiceKind.EMBEDDING, emb)
    wav = write_wav(tmp_path / "me.wav")
    beside = write_voice(tmp_path / ("me.wav" + SUFFIX))
    assert resolve_voice(str(wav), setup_16b).path == beside
    assert resolve_voice(f"file://{wav}", setup_16b).path == beside
    bare = write_wav(tmp_path / "bare.wav")
    with pytest.raises(InputError, match="precomputed voice embedding") as info:
        resolve_voice(str(bare), setup_16b)
    assert "tts-0.75b-en-public" in str(info.value) and "any audio" in str(info.value)


def test_local_voices_dir_override(voices_cache, tmp_path):
    folder = tmp_path / "my-voices"
    write_voice(folder / ("a/b.wav" + SUFFIX))
    setup = VoiceSetup.from_checkpoint(tts_checkpoint(), voices=folder)
    assert resolve_voice("a/b.wav", setup).path == folder / ("a/b.wav" + SUFFIX)
    with pytest.raises(InputError, match="unknown voice"):
        resolve_voice("a/c.wav", setup)


def test_prefix_model_voices(setup_075b, voices_cache, tmp_path):
    wav = write_wav(tmp_path / "any.wav")
    assert resolve_voice(str(wav), setup_075b) == ResolvedVoice(str(wav), VoiceKind.AUDIO_PREFIX, wav)
    assert resolve_voice(f"file://{wav}", setup_075b).path == wav
    assert resolve_voice(HAPPY, setup_075b).path == voices_cache / HAPPY
    emb = write_voice(tmp_path / "x.safetensors")
    with pytest.raises(InputError, match="audio file"):
        resolve_voice(str(emb), setup_075b)
    with pytest.raises(InputError, match="does not exist"):
        resolve_voice(f"file://{tmp_path}/missing.wav", setup_075b)


def test_embedding_checks(setup_16b, tmp_path):
    other = write_voice(tmp_path / "other.safetensors", sig="d6ef30c7", epoch=1000)
    with pytest.warns(VoiceMismatchWarning, match="d6ef30c7@1000"):
        load_voice_embedding(other, setup_16b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_voice_embedding(write_voice(tmp_path / "ok.safetensors"), setup_16b)
    with pytest.raises(InputError, match="dimension 8"):
        load_voice_embedding(write_voice(tmp_path / "d8.safetensors", dim=8), setup_16b)
    with pytest.raises(InputError, match="no speaker_wavs"):
        load_voice_embedding(write_voice(tmp_path / "key.safetensors", key="other"), setup_16b)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="cannot read"):
        load_voice_embedding(bad)
    flat = tmp_path / "flat.safetensors"
    save_file({"speaker_wavs": torch.zeros(DIM, FRAMES)}, str(flat))
    with pytest.raises(InputError, match=r"expected \[1, D, T\]"):
        load_voice_embedding(flat)


@pytest.mark.parametrize("n_voices", [1, 2, 5])
def test_speaker_condition_matches_reference(tmp_path, n_voices):
    ref_tts = pytest.importorskip("moshi.models.tts")
    paths = [write_voice(tmp_path / f"v{i}.safetensors", seed=10 + i) for i in range(n_voices)]
    ours = build_speaker_condition([load_voice_embedding(p) for p in paths], max_speakers=5)
    attrs = ref_tts.TTSModel.make_condition_attributes(SimpleNamespace(max_speakers=5), paths, cfg_coef=None)
    ref = attrs.tensor["speaker_wavs"]
    assert ours.tensor.shape == (1, 5 * FRAMES, DIM) and ours.mask.shape == (1, 5 * FRAMES)
    assert torch.equal(ours.tensor, ref.tensor) and torch.equal(ours.mask, ref.mask)
    assert int(ours.mask.sum()) == n_voices * FRAMES


def test_speaker_condition_errors(tmp_path):
    a = load_voice_embedding(write_voice(tmp_path / "a.safetensors"))
    b = load_voice_embedding(write_voice(tmp_path / "b.safetensors", frames=FRAMES + 1))
    with pytest.raises(InputError, match="voice 2"):
        build_speaker_condition([a, b])
    with pytest.raises(InputError, match="at most 2"):
        build_speaker_condition([a, a, a], max_speakers=2)


def test_audio_prefix_matches_reference_get_prefix(tmp_path):
    ref_tts = pytest.importorskip("moshi.models.tts")
    codes = torch.randint(0, 2048, (1, 16, 9))
    fake = SimpleNamespace(
        mimi=SimpleNamespace(sample_rate=SAMPLE_RATE, encode=lambda wav: codes),
        lm=SimpleNamespace(device="cpu"),
        machine=SimpleNamespace(token_ids=ref_tts.TokenIds(8001)),
    )
    ref = ref_tts.TTSModel.get_prefix(fake, write_wav(tmp_path / "p.wav"))
    ours = build_audio_prefix(codes[0], TtsTokenIds.for_text_card(8000))
    assert ours.shape == (17, 7) and torch.equal(ours, ref)
    with pytest.raises(InputError, match="too short"):
        build_audio_prefix(codes[0, :, :2], TtsTokenIds.for_text_card(8000))


def test_list_voices(setup_16b, tmp_path):
    local = tmp_path / "local"
    write_voice(local / ("mine.wav" + SUFFIX))
    write_wav(local / "clip.wav")
    (local / "notes.txt").write_text("not a voice")
    sources = [setup_16b.voices, ModelSource(name=str(local), local_dir=Path(local))]
    every = list_voices(sources)
    names = [(v.name, v.model_tag) for v in every]
    assert names == [
        ("clip.wav", None),
        (HAPPY, None),
        (HAPPY, f"{SIG}@{EPOCH}"),
        ("mine.wav", f"{SIG}@{EPOCH}"),
        ("vctk/p225_023.wav", f"{SIG}@{EPOCH}"),
        ("vctk/p225_023.wav", "d6ef30c7@1000"),
    ]
    mine = list_voices(sources, model_tag=voice_model_tag(setup_16b))
    assert ("vctk/p225_023.wav", "d6ef30c7@1000") not in [(v.name, v.model_tag) for v in mine]
    for info in mine:
        if info.kind is VoiceKind.EMBEDDING:
            assert resolve_voice(str(info.path), setup_16b).path == info.path
    assert {v.origin for v in every} == {"kyutai/tts-voices", str(local)}
