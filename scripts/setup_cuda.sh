#!/usr/bin/env bash
# Installs the CUDA 13.0 toolkit pieces that `cargo build --release --features cuda` needs, on a machine with no GPU
# and no system CUDA, and writes the environment for that build. Idempotent: a second run installs nothing.
#
#   bash scripts/setup_cuda.sh                 # installs (first run: ~1 GB download), writes the env file
#   source ~/.cache/vadapt/cuda-env.sh         # then, in the same shell:
#   CARGO_TARGET_DIR=target-cuda cargo build --release --features cuda
#
# Why PyPI: NVIDIA publishes nvcc, the headers and the libraries as wheels, so no apt repository or root is needed.
# Why 13.0 exactly: the GPU machines' driver is CUDA 13.0 (580.x), and a driver refuses PTX from a newer toolkit
# (candle-kernels compiles its kernels to PTX with this nvcc). The pins are the `cuda-toolkit==13.0.2` set.
# cudarc (candle's CUDA bindings, feature cuda-version-from-build-system) reads the version from `nvcc --version`,
# so 13.0 here selects cudarc's cuda-13000 bindings; no Cargo feature has to name it.
#
# Linking: candle turns on cudarc's dynamic-linking, so the binary names libcuda.so.1, libcudart.so.13,
# libnvrtc.so.13, libcublas.so.13, libcublasLt.so.13 and libcurand.so.10 (DT_NEEDED). At link time those come from
# the wheels; libcuda (the driver) is not in any wheel, so the link uses a stub with the same soname, built here
# from an empty C file. At run time the real driver provides it (scripts/gpu_check.sh sets LD_LIBRARY_PATH to the
# GPU machine's PyTorch nvidia/*/lib directories for the others).
#
# VADAPT_CUDA_VENV (default ~/.cache/vadapt/cuda-venv) is where the wheels go; the env file is written next to it
# (VADAPT_CUDA_ENV, default ~/.cache/vadapt/cuda-env.sh) and also printed.
set -euo pipefail

VENV="${VADAPT_CUDA_VENV:-$HOME/.cache/vadapt/cuda-venv}"
ENV_FILE="${VADAPT_CUDA_ENV:-$(dirname "$VENV")/cuda-env.sh}"
PINS=(
  nvidia-cuda-nvcc==13.0.88     # nvcc (candle-kernels' PTX and its static MoE/GGUF kernel library)
  nvidia-cuda-crt==13.0.88      # nvcc's crt headers
  nvidia-nvvm==13.0.88          # cicc/libnvvm, nvcc's device compiler
  nvidia-cuda-runtime==13.0.96  # cuda_runtime.h, libcudart.so.13
  nvidia-cuda-cccl==13.0.85     # CUB/Thrust/libcu++ headers the candle kernels include
  nvidia-cuda-nvrtc==13.0.88    # libnvrtc.so.13 (cudarc links it)
  nvidia-cublas==13.1.0.3       # libcublas.so.13, libcublasLt.so.13 (matmul)
  nvidia-curand==10.4.0.35      # libcurand.so.10 (random tensors on the device)
)
STAMP="$VENV/.vadapt-cuda-pins"

if ! printf '%s\n' "${PINS[@]}" | cmp -s - "$STAMP" 2>/dev/null; then
  mkdir -p "$(dirname "$VENV")"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  echo "setup_cuda: installing the CUDA 13.0 wheels into $VENV (first run only, ~1 GB)" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PINS[@]}"
  printf '%s\n' "${PINS[@]}" > "$STAMP"
fi

SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# CUDA 13 wheels share one tree, nvidia/cu13/{bin,include,lib}; older (cu12) wheels had one tree per package.
CUDA_ROOT="$SITE/nvidia/cu13"
for f in bin/nvcc include/cuda_runtime.h include/cccl/cub/cub.cuh lib/libcudart.so.13 lib/libnvrtc.so.13 \
  lib/libcublas.so.13 lib/libcublasLt.so.13 lib/libcurand.so.10; do
  [ -e "$CUDA_ROOT/$f" ] || { echo "setup_cuda: $CUDA_ROOT/$f missing after install (wheel layout changed?)" >&2; exit 1; }
done

# The linker wants unversioned names (-lcudart -> libcudart.so); the wheels ship only the sonames.
for so in cudart nvrtc cublas cublasLt curand; do
  real="$(cd "$CUDA_ROOT/lib" && ls "lib$so.so."* | sort | head -1)"
  [ -e "$CUDA_ROOT/lib/lib$so.so" ] || ln -sfn "$real" "$CUDA_ROOT/lib/lib$so.so"
done
# Driver stub, as the full toolkit's lib/stubs/libcuda.so: it only has to satisfy the linker, with the driver's
# soname (the binary then asks for libcuda.so.1, which the GPU machine's driver has) and every driver API name that
# cuda.h mentions (cuMemAlloc and cuMemAlloc_v2 alike; extra names cost nothing). It lives in lib/stubs so that
# nothing at run time picks it up by accident.
if [ ! -e "$CUDA_ROOT/lib/stubs/libcuda.so" ]; then
  mkdir -p "$CUDA_ROOT/lib/stubs"
  grep -ohE '\bcu[A-Z][A-Za-z0-9_]*\b' "$CUDA_ROOT/include/cuda.h" | sort -u | sed 's/.*/void &(void) {}/' \
    > "$CUDA_ROOT/lib/stubs/libcuda_stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CUDA_ROOT/lib/stubs/libcuda.so.tmp" "$CUDA_ROOT/lib/stubs/libcuda_stub.c"
  mv "$CUDA_ROOT/lib/stubs/libcuda.so.tmp" "$CUDA_ROOT/lib/stubs/libcuda.so"
fi

"$CUDA_ROOT/bin/nvcc" --version | grep -q "release 13.0," || {
  echo "setup_cuda: $CUDA_ROOT/bin/nvcc is not CUDA 13.0:" >&2
  "$CUDA_ROOT/bin/nvcc" --version >&2
  exit 1
}

mkdir -p "$(dirname "$ENV_FILE")"
cat > "$ENV_FILE.tmp" <<EOF
# Written by scripts/setup_cuda.sh: the environment for \`cargo build --release --features cuda\`.
export CUDA_ROOT="$CUDA_ROOT"          # cudarc's link search (lib, lib/stubs)
export CUDA_HOME="$CUDA_ROOT"          # cudaforge (candle-kernels' nvcc driver)
export NVCC="$CUDA_ROOT/bin/nvcc"
export PATH="$CUDA_ROOT/bin:\$PATH"   # cudarc runs \`nvcc --version\` from PATH
export CPATH="$CUDA_ROOT/include:$CUDA_ROOT/include/cccl\${CPATH:+:\$CPATH}"
export LIBRARY_PATH="$CUDA_ROOT/lib:$CUDA_ROOT/lib/stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
# No GPU to detect here: H100/H200 are sm_90.
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-90}"
EOF
mv "$ENV_FILE.tmp" "$ENV_FILE"
echo "setup_cuda: environment written to $ENV_FILE; use it with: source $ENV_FILE" >&2
cat "$ENV_FILE"
