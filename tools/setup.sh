#!/usr/bin/env bash
# Set up dsmcli on a fresh machine: torch first, the build that fits the machine (a plain `pip install torch`
# on Linux pulls the CUDA build: ~5 GB of nvidia-* packages), then the package, then its native CPU kernels.
#
#   bash tools/setup.sh           torch, `pip install -e .[live]`, `dsm kernels`
#   bash tools/setup.sh --test    the same with what the tests need (ffmpeg, PortAudio, the reference `moshi`)
#
# torch: with an NVIDIA GPU (`nvidia-smi -L` lists one) the default index's CUDA build; otherwise the CPU-only
# build from PyTorch's CPU wheel index, or the default index when that index cannot be reached (5 s, no retry).
# An installed torch is kept. Environment: PYTHON (default python3), DSM_SETUP_DRY_RUN=1 prints the pip commands
# instead of running them (and picks torch as if none were installed).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"
CPU_INDEX="https://download.pytorch.org/whl/cpu"
DRY_RUN="${DSM_SETUP_DRY_RUN:-}"

run() {
    if [[ -n "$DRY_RUN" ]]; then echo "+ $*"; else "$@"; fi
}

pip_install() {
    run "$PYTHON" -m pip install "$@"
}

has_nvidia_gpu() {
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '
}

install_torch() {
    if [[ -z "$DRY_RUN" ]] && "$PYTHON" -c "import torch" 2>/dev/null; then
        echo "setup: keeping the installed torch $("$PYTHON" -c "import torch; print(torch.__version__)")"
        return
    fi
    if has_nvidia_gpu; then
        echo "setup: NVIDIA GPU found: torch $TORCH_VERSION with CUDA from the default index (~3 GB download)"
        pip_install "torch==$TORCH_VERSION"
        return
    fi
    echo "setup: no NVIDIA GPU: CPU-only torch $TORCH_VERSION from $CPU_INDEX (~200 MB download)"
    if ! pip_install --timeout 5 --retries 0 --index-url "$CPU_INDEX" "torch==$TORCH_VERSION"; then
        echo "setup: $CPU_INDEX not reachable: torch from the default index instead"
        pip_install "torch==$TORCH_VERSION"
    fi
}

install_test_tools() {
    if command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
        local need=()
        command -v ffmpeg >/dev/null || need+=(ffmpeg)
        ldconfig -p | grep -q libportaudio || need+=(libportaudio2)
        # the sound-card tests (tests/test_live_sound.py): a private PulseAudio that PortAudio reaches through ALSA
        command -v pulseaudio >/dev/null || need+=(pulseaudio)
        command -v parec >/dev/null || need+=(pulseaudio-utils)
        dpkg -s libasound2-plugins >/dev/null 2>&1 || need+=(libasound2-plugins)
        if (( ${#need[@]} )); then
            run apt-get update -qq
            DEBIAN_FRONTEND=noninteractive run apt-get install -y -qq "${need[@]}" >/dev/null
        fi
    fi
}

install_torch
if [[ "${1:-}" == "--test" ]]; then
    install_test_tools
    pip_install -q -e ".[test,ray]"
    # The reference implementation is a test oracle only; --no-deps keeps its old torch pin out.
    pip_install -q --no-deps "moshi==0.2.13"
else
    pip_install -q -e ".[live]"
fi
# The native CPU kernels (int8 / int4 LM, depformer, Mimi streaming), ~15 s each, now rather than during the first run.
run "$PYTHON" -m dsmcli kernels || echo "setup: dsm works without these kernels, on slower pure-torch paths"
