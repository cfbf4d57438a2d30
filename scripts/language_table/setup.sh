#!/usr/bin/env bash
# Sets up the LanguageTable simulator for scripts/language_table/generate.py (a development-time data generator;
# CI never runs it):
#   1. a Python 3.11 venv (LT_VENV, default ~/.cache/vadapt/langtable-venv) with requirements.txt;
#   2. the simulator source (google-research/language-table, Apache-2.0) at the pinned commit below, extracted to
#      LT_SRC (default ~/.cache/vadapt/language-table-<commit>) with optional_imports.patch applied, which makes
#      tensorflow (utils_pybullet: gfile only), oracles.plot (rrt_star) and tf_agents (oriented_push_oracle)
#      optional imports.
# The source comes from LT_MIRROR, a git clone or bare mirror of the public GitHub repository
# google-research/language-table (default /work/.mirror/google-research+language-table/repo); on a machine without
# one: `git clone https://github.com/google-research/language-table "$LT_MIRROR"` (any clone that has the commit).
# Idempotent; prints `source LT_SRC` lines the generator needs (it finds them itself with the defaults).
# Measured here: venv + wheels 20 s (pybullet 3.2.7 ships a cp311 manylinux wheel, 103 MB), source + patch < 1 s.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
COMMIT=5b7bf0e9ff4edce323d5dd6d18e3341ae3ddb438   # 2026-04-09, "Automated Code Change" (HEAD of main when pinned)
LT_VENV="${LT_VENV:-$HOME/.cache/vadapt/langtable-venv}"
LT_SRC="${LT_SRC:-$HOME/.cache/vadapt/language-table-${COMMIT:0:12}}"
LT_MIRROR="${LT_MIRROR:-/work/.mirror/google-research+language-table/repo}"

# Python 3.11: the simulator's pins (numpy<2, gym 0.23) and pybullet's wheels are known to work there.
PY="${LT_PYTHON:-}"
if [ -z "$PY" ]; then
  for c in python3.11 python3; do
    if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PY="$c"; break
    fi
  done
fi
if [ -z "$PY" ]; then
  echo "setup: need Python 3.11 (set LT_PYTHON); e.g. 'pip install uv && uv python install 3.11'" >&2
  exit 1
fi

if [ ! -x "$LT_VENV/bin/python" ]; then
  "$PY" -m venv "$LT_VENV"
fi
if ! "$LT_VENV/bin/pip" freeze 2>/dev/null | sort | diff -q - <(sed 's/ *#.*//' "$HERE/requirements.txt" | grep . | sort) >/dev/null; then
  "$LT_VENV/bin/pip" install --quiet -r "$HERE/requirements.txt"
fi

if [ ! -f "$LT_SRC/.patched" ]; then
  if ! git -C "$LT_MIRROR" cat-file -e "$COMMIT^{commit}" 2>/dev/null; then
    echo "setup: no clone of google-research/language-table with commit $COMMIT at LT_MIRROR=$LT_MIRROR;" >&2
    echo "       git clone https://github.com/google-research/language-table \"\$LT_MIRROR\"" >&2
    exit 1
  fi
  tmp="$LT_SRC.tmp.$$"
  rm -rf "$tmp" && mkdir -p "$tmp"
  git -C "$LT_MIRROR" archive "$COMMIT" LICENSE language_table/__init__.py language_table/environments \
    | tar -x -C "$tmp"
  (cd "$tmp" && patch -p1 --quiet < "$HERE/optional_imports.patch")
  echo "$COMMIT" > "$tmp/.patched"
  rm -rf "$LT_SRC" && mv "$tmp" "$LT_SRC"
fi

# 3. Photographs for the photo-like look (appearance.photo_look, the real_aug model's data): two texture photos from
#    Debian's sweethome3d package (GPL-2+; only the rendered training data uses them, nothing in the repository
#    ships them), extracted to PHOTO_TEXTURES. `apt-get download` needs Debian's package index, not root.
PHOTO_TEXTURES="${PHOTO_TEXTURES:-$HOME/.cache/vadapt/photo-textures}"
if [ ! -f "$PHOTO_TEXTURES/.done" ]; then
  tmp="$PHOTO_TEXTURES.tmp.$$"
  rm -rf "$tmp" && mkdir -p "$tmp"
  (cd "$tmp" && apt-get download sweethome3d >/dev/null 2>&1) || {
    echo "setup: apt-get download sweethome3d failed (the photo look's textures; apt-get update first?)" >&2; exit 1; }
  dpkg-deb --fsys-tarfile "$tmp"/sweethome3d_*.deb | tar -x -C "$tmp" ./usr/share/sweethome3d/sweethome3d.jar
  for f in woodenFloor roughcast; do
    unzip -q -j -o "$tmp/usr/share/sweethome3d/sweethome3d.jar" \
      "com/eteks/sweethome3d/io/resources/textures/$f.jpg" -d "$tmp"
  done
  ls "$tmp"/sweethome3d_*.deb | sed 's|.*/||' > "$tmp/.done"
  rm -rf "$tmp/usr" "$tmp"/sweethome3d_*.deb
  rm -rf "$PHOTO_TEXTURES" && mv "$tmp" "$PHOTO_TEXTURES"
fi

# Smoke test: the environment and the oracle import without tensorflow / tf_agents.
PYTHONPATH="$LT_SRC" "$LT_VENV/bin/python" -c '
from language_table.environments import language_table
from language_table.environments.oracles import push_oracle_rrt_slowdown' 2>/dev/null
echo "setup: venv $LT_VENV, simulator source $LT_SRC (commit ${COMMIT:0:12}), photo textures $PHOTO_TEXTURES"
