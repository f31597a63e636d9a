#!/usr/bin/env bash
# One-time set-up on a fresh Debian/Ubuntu machine: system tools, a virtual environment
# with the CPU build of torch (for export), and this package with all its extras.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v espeak-ng >/dev/null || need_apt+=(espeak-ng)
command -v sox >/dev/null || need_apt+=(sox)
# microphone capture: PortAudio, and PulseAudio (its null sink's monitor is the test microphone)
[ -e /usr/lib/x86_64-linux-gnu/libportaudio.so.2 ] || [ -e /usr/lib/aarch64-linux-gnu/libportaudio.so.2 ] \
  || need_apt+=(libportaudio2)
command -v pulseaudio >/dev/null || need_apt+=(pulseaudio)
command -v paplay >/dev/null || need_apt+=(pulseaudio-utils)
dpkg -s libasound2-plugins >/dev/null 2>&1 || need_apt+=(libasound2-plugins)
# the browser page's test: headless Chromium with a fake microphone (Playwright drives it)
command -v chromium >/dev/null || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
# The CPU build of torch first, from PyTorch's CPU wheel index: the default index's Linux torch
# is the multi-GB CUDA build. Where that index cannot be reached (offline mirrors), the default
# index; failing fast, as an unreachable index would otherwise be retried for minutes.
.venv/bin/pip install -q --index-url https://download.pytorch.org/whl/cpu --timeout 10 --retries 0 torch==2.13.0 \
  || { echo "PyTorch's CPU wheel index unreachable: torch from the default index" >&2
       .venv/bin/pip install -q torch==2.13.0; }
# llama-cpp-python compiles from source (about 10 minutes on 2 cores; pip caches the wheel).
.venv/bin/pip install -q -e ".[export,quantize,server,mic,wyoming,batch,dev]"
echo "set-up done: .venv/bin/moss-edge is ready"
