"""Tiny reference checkpoints in the exact released Kyutai DSM layout, built with ``moshi``.

CLI::

    python tools/make_fixtures.py OUTDIR            # write the tiny repos into OUTDIR
    python tools/make_fixtures.py OUTDIR --check    # regenerate in a temp dir, compare SHA-256s
    python tools/make_fixtures.py --real-mimi FILE  # real-size random Mimi (~385 MB)

As a module (tests import it; ``tests/conftest.py`` puts ``tools/`` on ``sys.path``)::

    build_ref_mimi(mimi_config | None, seed) -> moshi MimiModel     save_mimi(model, path)
    build_ref_lm(lm_kwargs, seed) -> moshi LMModel (fp32)           save_lm(model, path, packed_depformer=True)
    train_tokenizer(path, vocab_size)                               install_into_hf_cache(repo_dir, cache_dir, repo_id)
    make_all(outdir) -> {repo name: folder}                         make_real_mimi(path, seed=REAL_MIMI_SEED)

Repos written by ``make_all`` (see FORMAT.md §1 for the released ones they imitate):
``tiny-stt`` (stt-1b-en_fr), ``tiny-stt-prefix`` (stt-2.6b-en), ``tiny-tts`` (tts-1.6b-en_fr),
``tiny-tts-prefix`` (tts-0.75b-en-public) and ``tiny-voices`` (tts-voices, two voices for tiny-tts).
Every output is bit-for-bit reproducible (fixed seeds, one torch thread, deterministic SPM).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import numpy as np
import torch

TOOLS_DIR = Path(__file__).resolve().parent
if str(TOOLS_DIR) not in sys.path:  # imported by path rather than run as a script
    sys.path.insert(0, str(TOOLS_DIR))

from fixturelib import repos
from fixturelib.audio import SHARED_DATA, speech_24k
from fixturelib.hfcache import install_into_hf_cache, repo_files
from fixturelib.lm import build_ref_lm, load_ref_lm, released_lm_state, save_lm
from fixturelib.mimi import (
    build_ref_mimi,
    encode_voice_latent,
    load_ref_mimi,
    released_mimi_state,
    save_mimi,
    tiny_mimi_config,
)
from fixturelib.text import train_tokenizer

from dsmcli.constants import SAMPLE_RATE

REPO_OWNER = "dsm-test"
REPO_NAMES = ("tiny-stt", "tiny-stt-prefix", "tiny-tts", "tiny-tts-prefix", "tiny-voices")
SEEDS = {"mimi": 1000, "tiny-stt": 1001, "tiny-stt-prefix": 1002, "tiny-tts": 1003, "tiny-tts-prefix": 1004}
REAL_MIMI_SEED = 2000
REAL_MIMI_NAME = repos.TTS_MIMI_NAME  # the released Mimi file name
VOICE_SECONDS = 10.0
# name → (speech file, offset s); the voice wav is VOICE_SECONDS long.
VOICES = {"alice": ("bria.mp3", 0.0), "bob": ("loona.mp3", 0.0)}
VOICE_DIR = "voices"
# Real speech the STT text heads are calibrated on: (file, offset s), VOICE_SECONDS each.
STT_CALIBRATION_SPEECH = (
    ("bria.mp3", 0.0),
    ("bria.mp3", 10.0),
    ("bria.mp3", 20.0),
    ("bria.mp3", 30.0),
    ("loona.mp3", 0.0),
)

__all__ = [
    "REAL_MIMI_NAME",
    "REPO_NAMES",
    "REPO_OWNER",
    "build_ref_lm",
    "build_ref_mimi",
    "fixture_version",
    "install_into_hf_cache",
    "load_ref_lm",
    "load_ref_mimi",
    "make_all",
    "make_real_mimi",
    "real_mimi_version",
    "released_lm_state",
    "released_mimi_state",
    "repo_id",
    "save_lm",
    "save_mimi",
    "tiny_mimi_config",
    "train_tokenizer",
]


def repo_id(name: str) -> str:
    """Hub id under which a tiny repo is installed in test caches (``dsm-test/<name>``)."""
    return f"{REPO_OWNER}/{name}"


def _sha256_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def fixture_version() -> str:
    """12 hex digits identifying the generator code (this file and ``fixturelib/*.py``)."""
    return _sha256_files([Path(__file__).resolve(), *sorted((TOOLS_DIR / "fixturelib").glob("*.py"))])


def real_mimi_version() -> str:
    """12 hex digits identifying the real-size Mimi generator (``fixturelib/{mimi,audio}.py``)."""
    lib = TOOLS_DIR / "fixturelib"
    return _sha256_files([lib / "mimi.py", lib / "audio.py"])


@contextmanager
def _deterministic() -> Iterator[None]:
    """One intra-op thread (reductions then do not depend on the core count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _speech_codes(mimi: torch.nn.Module, clips: tuple[tuple[str, float], ...]) -> torch.Tensor:
    """Mimi codes ``[B, n_q, T]`` of VOICE_SECONDS of each (file, offset) clip."""
    wav = torch.stack([torch.from_numpy(speech_24k(SHARED_DATA / f, VOICE_SECONDS, o)) for f, o in clips])
    with torch.no_grad():
        return mimi.encode(wav[:, None, :])


def _write_lm_repo(
    repo: Path, config: dict[str, Any], seed: int, shared: dict[str, Path], codes: torch.Tensor | None
) -> None:
    """config.json, the LM weights, and copies of the shared Mimi / Mimi config / tokenizer."""
    _write_json(repo / "config.json", config)
    shutil.copyfile(shared["mimi"], repo / config["mimi_name"])
    shutil.copyfile(shared["mimi_config"], repo / config["mimi_config_name"])
    shutil.copyfile(shared["tokenizer"], repo / config["tokenizer_name"])
    model = build_ref_lm(repos.lm_part(config), seed, calibration_codes=codes)
    save_lm(model, repo / config["moshi_name"])


def save_with_metadata(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """``safetensors`` save with the ``__metadata__`` keys sorted.

    safetensors writes metadata from a hash map, so its key order (and the file bytes) would
    change from run to run; the rewritten header has the same length and content.
    """
    from safetensors.torch import save

    blob = save(tensors, metadata=metadata)
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    if len(text) > size:
        raise RuntimeError("safetensors header grew while sorting its metadata")
    path.write_bytes(blob[:8] + text.ljust(size, b" ") + blob[8 + size :])


def _write_voices(repo: Path, mimi: torch.nn.Module, model_id: dict[str, Any]) -> None:
    """``voices/<name>.wav`` (10 s, 24 kHz, 16-bit) and its ``speaker_wavs`` embedding for tiny-tts."""
    import soundfile

    suffix = f".{model_id['sig']}@{model_id['epoch']}.safetensors"
    for name, (speech, offset) in VOICES.items():
        wav_path = repo / VOICE_DIR / f"{name}.wav"
        wav_path.parent.mkdir(parents=True, exist_ok=True)
        pcm = np.clip(np.round(speech_24k(SHARED_DATA / speech, VOICE_SECONDS, offset) * 32768), -32768, 32767)
        soundfile.write(str(wav_path), pcm.astype(np.int16), SAMPLE_RATE, subtype="PCM_16")
        samples = torch.from_numpy(pcm.astype(np.float32) / 32768)  # exactly what reading the wav gives
        latent = encode_voice_latent(mimi, samples)  # [1, D, 125]
        metadata = {"sig": str(model_id["sig"]), "epoch": str(model_id["epoch"])}
        save_with_metadata({"speaker_wavs": latent}, repo / VOICE_DIR / f"{name}.wav{suffix}", metadata)


def make_all(outdir: Path | str) -> dict[str, Path]:
    """Write every tiny repo folder into ``outdir``; returns {repo name: folder}."""
    outdir = Path(outdir)
    folders = {name: outdir / name for name in REPO_NAMES}
    with _deterministic(), tempfile.TemporaryDirectory() as tmp:
        mimi_config = tiny_mimi_config()
        mimi = build_ref_mimi(mimi_config, SEEDS["mimi"])
        shared = {
            "mimi": save_mimi(mimi, Path(tmp) / "mimi.safetensors"),
            "mimi_config": Path(tmp) / repos.MIMI_CONFIG_NAME,
            "tokenizer": train_tokenizer(Path(tmp) / "tokenizer.model", repos.TEXT_VOCAB),
        }
        _write_json(shared["mimi_config"], mimi_config)
        card = mimi_config["quantizer"]["bins"]
        latent_dim = mimi_config["seanet"]["dimension"]
        tts = repos.tts_config(card, latent_dim)
        configs = {
            "tiny-stt": repos.stt_config(card, prefix=False),
            "tiny-stt-prefix": repos.stt_config(card, prefix=True),
            "tiny-tts": tts,
            "tiny-tts-prefix": repos.tts_prefix_config(card),
        }
        stt_codes = _speech_codes(mimi, STT_CALIBRATION_SPEECH)
        for name, config in configs.items():
            codes = stt_codes if config["model_type"] == "stt" else None
            _write_lm_repo(folders[name], config, SEEDS[name], shared, codes)
        _write_voices(folders["tiny-voices"], mimi, tts["model_id"])
    return folders


def make_real_mimi(path: Path | str, seed: int = REAL_MIMI_SEED) -> Path:
    """A real-size (released ``_mimi_config``) random Mimi, saved under the released names (~385 MB)."""
    with _deterministic():
        model = build_ref_mimi(None, seed)
        return save_mimi(model, path)


def _digests(root: Path) -> dict[str, str]:
    return {rel.as_posix(): hashlib.sha256((root / rel).read_bytes()).hexdigest() for rel in repo_files(root)}


def check(outdir: Path) -> list[str]:
    """Regenerate into a temp dir; the files whose SHA-256 differ from ``outdir`` (or exist in one only)."""
    with tempfile.TemporaryDirectory() as tmp:
        make_all(tmp)
        fresh, existing = _digests(Path(tmp)), _digests(outdir)
    return sorted(k for k in fresh.keys() | existing.keys() if fresh.get(k) != existing.get(k))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", nargs="?", type=Path, help="folder receiving one sub-folder per tiny repo")
    parser.add_argument("--check", action="store_true", help="regenerate in a temp dir and compare SHA-256s")
    parser.add_argument("--real-mimi", type=Path, metavar="FILE", help="write the real-size random Mimi to FILE")
    args = parser.parse_args(argv)
    if args.outdir is None and args.real_mimi is None:
        parser.error("give OUTDIR and/or --real-mimi FILE")
    if args.real_mimi is not None:
        print(make_real_mimi(args.real_mimi))
    if args.outdir is None:
        return 0
    if not args.check or not args.outdir.is_dir():
        for folder in make_all(args.outdir).values():
            print(folder)
    if args.check:
        differing = check(args.outdir)
        for name in differing:
            print(f"differs: {name}", file=sys.stderr)
        print("reproducible" if not differing else f"{len(differing)} file(s) differ")
        return 1 if differing else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
