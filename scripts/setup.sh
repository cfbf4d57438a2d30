#!/usr/bin/env bash
# Installs everything vadapt's build and tests need on a fresh Debian machine. Idempotent: a second run
# installs nothing and takes a second.
set -euo pipefail

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
