#!/usr/bin/env bash
# Set up dsmcli on a fresh machine: CPU torch first (a plain `torch` requirement may pull a
# multi-GB CUDA build), then the package. Pass --test to also install what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
PIP="python3 -m pip"
python3 -c "import torch" 2>/dev/null || $PIP install -q "torch==2.13.0"
if [[ "${1:-}" == "--test" ]]; then
    if command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
        need=()
        command -v ffmpeg >/dev/null || need+=(ffmpeg)
        ldconfig -p | grep -q libportaudio || need+=(libportaudio2)
        if (( ${#need[@]} )); then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
        fi
    fi
    $PIP install -q -e ".[test,ray]"
    # The reference implementation is a test oracle only; --no-deps keeps its old torch pin out.
    $PIP install -q --no-deps "moshi==0.2.13"
else
    $PIP install -q -e ".[live]"
fi
