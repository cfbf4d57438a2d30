#!/usr/bin/env bash
# Installs everything vadapt's build and tests need on a fresh Debian machine. Idempotent: a second run
# installs nothing and takes a second.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  pkg-config clang libclang-dev              # bindgen for ffmpeg-sys-next
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev
  libavfilter-dev libavdevice-dev             # FFmpeg (AV1 via libdav1d/libaom/libsvtav1, H.264 via libx264)
  ffmpeg                                      # the CLI, used by tests to probe what we write
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust stable (rustup) first" >&2
  exit 1
fi

# Python venv for the interoperability tests (lerobot writes/loads LeRobot v3.0, tensorflow-datasets writes RLDS) and
# for regenerating tests/fixtures/parity (transformers; the parity tests themselves read committed files only).
# About 9 GB and 5 minutes on a fresh machine (PyPI's torch wheel carries CUDA libraries). It lives outside the
# checkout (VADAPT_VENV, default ~/.cache/vadapt/interop-venv) so every clone on a machine shares it, and
# `.venv` in the checkout links to it; it is skipped when the pinned requirements are already installed.
# VADAPT_SKIP_PYTHON=1 skips it (the interop tests then fail, saying why).
if [ "${VADAPT_SKIP_PYTHON:-0}" != "1" ]; then
  # Two pinned lists: the interop tests', and the parity fixtures' generator (tests/parity; transformers).
  REQS=(tests/interop/requirements.txt tests/parity/requirements.txt)
  VENV="${VADAPT_VENV:-$HOME/.cache/vadapt/interop-venv}"
  STAMP="$VENV/.vadapt-requirements"
  if ! cat "${REQS[@]}" | cmp -s - "$STAMP" 2>/dev/null; then
    mkdir -p "$(dirname "$VENV")"
    if [ ! -x "$VENV/bin/python" ]; then
      python3 -m venv "$VENV" 2>/dev/null || {
        rm -rf "$VENV"
        ${SUDO:-} apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$VENV"
      }
    fi
    echo "setup: installing Python interop packages into $VENV (first run only, a few minutes)" >&2
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${REQS[@]/#/-r}"
    cat "${REQS[@]}" > "$STAMP"
  fi
  if [ ! -e .venv ] || [ -L .venv ]; then
    ln -sfn "$VENV" .venv
  fi
fi
