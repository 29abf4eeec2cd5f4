#!/usr/bin/env bash
# Live captions from any stream ffmpeg can read: subtitles are appended as cues become final,
# so `tail -f captions.srt` (or a player) can follow them while the stream is still running.
#   bash examples/live_captions.sh https://example.org/live.m3u8 captions.srt
set -euo pipefail
src=${1:?input url or file}; out=${2:-captions.srt}
ffmpeg -loglevel error -i "$src" -f s16le -ar 24000 -ac 1 - \
  | dsm transcribe - --raw --format srt --output "$out" --force
