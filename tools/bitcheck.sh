#!/bin/bash
# Compare the default-path outputs of this tree with those of an earlier revision, bit for bit:
# a transcript (bria, decoded once to a 24 kHz float WAV so both sides read the same samples; JSON and SRT),
# `dsm speak` with an embedding voice (WAV + word JSON), with an audio-prefix voice, and `dsm dialog`, on the tiny
# fixture models (run the tests once first: they build tests/.fixtures). Prints what differs; for WAVs, the largest
# difference in s16 units. Set DSM_NO_NATIVE_KERNELS=1 to compare the pure-torch paths.
#   bash tools/bitcheck.sh REV      e.g. bash tools/bitcheck.sh 421628c
set -euo pipefail
REV=${1:?usage: tools/bitcheck.sh REV}
ROOT=$(git rev-parse --show-toplevel)
FX=$(ls -d "$ROOT"/tests/.fixtures/*/ | head -1)
WORK=$(mktemp -d)
trap 'git -C "$ROOT" worktree remove --force "$WORK/old" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
git -C "$ROOT" worktree add -q --detach "$WORK/old" "$REV"
ffmpeg -nostdin -loglevel error -i "$ROOT/../shared/data/bria.mp3" -ar 24000 -ac 1 -c:a pcm_f32le "$WORK/bria.wav"
printf '[S1] Hello there, how are you?\n[S2] Fine, thanks. And you?\n' > "$WORK/talk.txt"

outputs() {  # TREE OUT
  local out=$2
  mkdir -p "$out"
  (cd "$1" && export PYTHONPATH="$1" HF_HUB_OFFLINE=1
   python -m dsmcli transcribe "$WORK/bria.wav" -m "$FX/tiny-stt" -o "$out/" -f json -f srt --force 2>/dev/null
   python -m dsmcli speak --text "Hello world. This is a bit check of the speech path." -m "$FX/tiny-tts" \
     --voice-repo "$FX/tiny-voices" --voice voices/alice.wav --seed 7 -o "$out/tts.wav" --json --force 2>/dev/null
   python -m dsmcli speak --text "A prefix voice speaks this line." -m "$FX/tiny-tts-prefix" \
     --voice "$FX/tiny-voices/voices/bob.wav" --seed 3 -o "$out/tts_prefix.wav" --force 2>/dev/null
   python -m dsmcli dialog "$WORK/talk.txt" -m "$FX/tiny-tts" --voice-repo "$FX/tiny-voices" -v voices/alice.wav \
     -v voices/bob.wav --seed 5 -o "$out/dialog.wav" --force 2>/dev/null)
}
outputs "$WORK/old" "$WORK/out-old"
outputs "$ROOT" "$WORK/out-new"
python - "$WORK/out-old" "$WORK/out-new" <<'PY'
import json, sys
from pathlib import Path
import numpy as np, soundfile
old, new = map(Path, sys.argv[1:3])
same = True
for a in sorted(old.iterdir()):
    b = new / a.name
    if a.read_bytes() == b.read_bytes():
        print(f"identical  {a.name}")
        continue
    same = False
    if a.suffix == ".wav":
        x, y = (soundfile.read(p, dtype="int16")[0].astype(int) for p in (a, b))
        if x.shape != y.shape:
            print(f"DIFFERENT  {a.name}: {len(x)} vs {len(y)} samples")
        else:
            print(f"DIFFERENT  {a.name}: max |diff| {np.abs(x - y).max()} (s16 units), "
                  f"{(x != y).mean():.3%} of samples")
    else:
        print(f"DIFFERENT  {a.name}")
sys.exit(0 if same else 1)
PY
