#!/usr/bin/env bash
# The GPU check: one command for a GPU machine (H100/H200, NVIDIA driver 580 / CUDA 13.0, PyTorch 2.11 in python3;
# no Rust, no registries, no FFmpeg). Writes $OUT/gpu_check.json (every number and verdict) and one log per step.
#
# Prepare here (a CPU machine), once per source change:
#   bash scripts/gpu_check.sh --prepare
# which builds `--no-default-features --features cuda` (no video I/O: the GPU machine lacks Debian's FFmpeg
# libraries, 165 MB of them, see src/io/video/disabled.rs) into target-cuda, strips it into .gpu/vadapt.xz and puts
# the peer's Python packages into .peer/peer.tar.xz (both ignored by git). Then on the device:
#   run(command="bash scripts/gpu_check.sh", carry=[".gpu", ".peer"], timeout_s=480)
# Steps can be picked with STEPS (default "parity bench peer train pipeline"), e.g. STEPS=peer with carry [".peer"]
# alone.
# The working tree plus carried files must stay under 64 MiB; `--prepare` prints the sizes. Measured 2026-12-06:
# tracked tree 40.7 MiB, .gpu/vadapt.xz 11.0 MiB (83 MB stripped; it needs libcuda.so.1 from the driver and
# libcudart.so.13, libcublas(Lt).so.13, libcurand.so.10 from PyTorch's site-packages/nvidia/*/lib, found below),
# .whl 4.5 MiB: 56.2 MiB. The peer's wheels are now unpacked without diffusers/pipelines/ (12 MB of pipeline code
# that `from diffusers import UNet3DConditionModel` never imports: its __init__ is lazy) and packed as one tar.xz,
# 0.9 MiB instead of 4.5 (2026-12-06: tree 45.6 MiB + 11.0 + 0.9 = 57.5 MiB).
#
# Dry run on a CPU machine with the CPU binary (same steps, F32 and F16, small bench shape):
#   DEVICE=cpu VADAPT=target/release/vadapt PYTHON=.venv/bin/python bash scripts/gpu_check.sh
# (a `--no-default-features` build runs every step too: the pipeline step writes no video).
#
# Checks and their tolerances (max |ours - reference| over max |reference|, except F32 which uses the test suite's
# absolute tolerances: UNet3D 1e-4, composition 1e-3, VAE/CLIP 1e-4):
#   * UNet3D forward, tests/fixtures/unet3d/{tiny,modelscope_mini}: F16 2e-2, BF16 5e-2;
#   * composed sampling (Video Adapter and CFG-mix, 10 DDIM steps), tests/fixtures/compose: F16 5e-2, BF16 1e-1;
#   * VAE encode / decode and CLIP last_hidden_state, tests/fixtures/parity: VAE F16 2e-2, BF16 5e-2, CLIP F32 only.
#   These reduced-precision bounds are a few roundings of the format (2^-11, 2^-8) times the depth of the network;
#   the JSON keeps every measured value so they can be tightened from the first GPU run.
# Then: `vadapt bench --unet-config benches/configs/modelscope_t2v_unet.json` (1.4 B parameters, batch 2 = one
# guided step, 16 frames at 40x64 latents) in BF16, next to diffusers' UNet3DConditionModel with the same config,
# dtype, shapes and timing rule (best of REPS after a warm-up, synchronised) on PyTorch; and `vadapt train` steps
# per second on the bundled RLDS sample (JPEG frames, no FFmpeg needed). Target: under 6 minutes on an H100.
# The pipeline step: `vadapt augment` of pipelines/demo.toml (4 targets: 2 edge models, 2 compositions with the demo
# prior; 6 DDIM steps, 4 overlapping windows per 24-frame episode) on the RLDS sample (4 episodes, 90x160), the
# cameras written as PNG (`[output] storage = "images"`: the GPU binary has no video I/O), once on $DEVICE and once
# on the CPU, same seeds, F32; wall seconds and episodes per hour of each; every generated camera compared GPU vs CPU
# with `vadapt eval --reference-dataset` (PSNR, SSIM, max abs pixel difference). Bound: PSNR >= 40 dB per camera
# (identical = infinite passes). Why 40: both sides run F32 and draw the same noise (drawn on the host, then moved),
# so they differ only by summation order (cuBLAS and candle's CUDA kernels vs the CPU kernels), ~1e-6 relative per
# op, carried through 6 steps and the window averaging; after quantizing to 8 bits that flips some pixel values by
# 1, and even every value off by 1 is 48.1 dB. 40 dB (MSE 6.5) leaves room for a few sensitive pixels drifting
# further, while any wrong op (a kernel path, a layout, a mask) moves whole frames and lands far below 30 dB (two
# different renderings of the same motion score 5-30 dB, tests/it/eval.rs). max abs diff is recorded, not bounded.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [ "${1:-}" = "--prepare" ]; then
  set -e
  # shellcheck disable=SC1091
  bash scripts/setup_cuda.sh >/dev/null
  source "${VADAPT_CUDA_ENV:-$HOME/.cache/vadapt/cuda-env.sh}"
  CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target-cuda}" cargo build --release --no-default-features --features cuda
  mkdir -p .gpu .peer
  strip -o .gpu/vadapt "${CARGO_TARGET_DIR:-target-cuda}/release/vadapt"
  xz -T2 -6 -f .gpu/vadapt
  # The peer: diffusers as our venv pins it, and huggingface_hub < 1.0 (the GPU image has 1.x, which diffusers 0.35
  # predates). Everything else diffusers imports is in the GPU image (numpy, pillow, regex, requests, safetensors...).
  wheels=$(mktemp -d) site=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$wheels" diffusers==0.35.2 huggingface_hub==0.35.3
  for w in "$wheels"/*.whl; do python3 -m zipfile -e "$w" "$site"; done
  rm -rf "$site/diffusers/pipelines"
  tar -C "$site" -cJf .peer/peer.tar.xz diffusers huggingface_hub
  rm -rf "$wheels" "$site"
  du -b .gpu/* .peer/* | awk '{s+=$1; print} END {printf "carried: %.1f MiB\n", s/1048576}'
  git ls-files -z | xargs -0 du -cb | tail -1 | awk '{printf "tracked tree: %.1f MiB\n", $1/1048576}'
  exit 0
fi

DEVICE="${DEVICE:-cuda}"
OUT="${OUT:-out/gpu_check}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PYTHON="${PYTHON:-python3}"
STEPS="${STEPS:-parity bench peer train pipeline}"
REPS="${REPS:-3}"
if [ "$DEVICE" = cpu ]; then
  DTYPES="${DTYPES:-f32 f16}"        # candle has no BF16 matmul on the CPU
  BENCH_FRAMES="${BENCH_FRAMES:-2}"  # the real shape takes minutes per forward on a CPU
  BENCH_LATENT="${BENCH_LATENT:-8x8}"
  BENCH_DTYPE="${BENCH_DTYPE:-f32}"
  TRAIN_STEPS="${TRAIN_STEPS:-2 6}"
else
  DTYPES="${DTYPES:-f32 f16 bf16}"
  BENCH_FRAMES="${BENCH_FRAMES:-16}"
  BENCH_LATENT="${BENCH_LATENT:-40x64}"
  BENCH_DTYPE="${BENCH_DTYPE:-bf16}"
  TRAIN_STEPS="${TRAIN_STEPS:-5 45}"
fi
T0=$(date +%s)
# Only a few files come back from a device run (8, two folders deep): intermediates go to $WORK, and $OUT ends with
# gpu_check.json, gpu_check.log (every step's log appended) and bench.json / peer.json.
WORK="${WORK:-$(mktemp -d /tmp/gpu_check.XXXXXX)}"
RESULTS="$WORK/results.jsonl"
: > "$RESULTS"
: > "$OUT/gpu_check.log"
say() { echo "gpu_check: $*" | tee -a "$OUT/gpu_check.log" >&2; }
now() { "$PYTHON" -c 'import time; print(f"{time.time():.3f}")'; }
record() { echo "$1" >> "$RESULTS"; }  # one JSON object per line, merged at the end
record_report() {  # step file: the step's JSON report, compacted onto one line
  record "$("$PYTHON" -c 'import json, sys; print(json.dumps({"step": sys.argv[1], "ok": True,
    "report": json.loads(open(sys.argv[2]).read().strip().splitlines()[-1] if sys.argv[1] == "peer"
                         else open(sys.argv[2]).read())}))' "$1" "$2")"
}

# --- the binary and its libraries ------------------------------------------------------------------------------
if [ -z "${VADAPT:-}" ]; then
  VADAPT=/tmp/vadapt-gpu
  if [ -f .gpu/vadapt.xz ]; then
    "$PYTHON" -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      .gpu/vadapt.xz "$VADAPT"
    chmod +x "$VADAPT"
  else
    say ".gpu/vadapt.xz missing: run 'bash scripts/gpu_check.sh --prepare' here and carry .gpu"
    exit 2
  fi
fi
if [ "$DEVICE" != cpu ]; then
  # cudarc links cuBLAS, cuRAND, NVRTC and the CUDA runtime by soname; PyTorch's wheels carry all of them
  # (site-packages/nvidia/*/lib), the driver brings libcuda.so.1.
  NV_LIBS=$("$PYTHON" - <<'EOF' 2>/dev/null
import glob, os, nvidia
dirs = []
for root in nvidia.__path__:
    dirs += sorted(d for d in glob.glob(os.path.join(root, "*", "lib")) if os.path.isdir(d))
print(":".join(dirs))
EOF
)
  export LD_LIBRARY_PATH="${NV_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
ldd "$VADAPT" > "$WORK/ldd.log" 2>&1
cat "$WORK/ldd.log" >> "$OUT/gpu_check.log"
if grep -q "not found" "$WORK/ldd.log"; then
  say "the binary's libraries are missing:"; grep "not found" "$WORK/ldd.log" >&2
  record '{"step": "ldd", "ok": false}'
  exit 3
fi
say "device $DEVICE, dtypes $DTYPES, binary $VADAPT"
command -v nvidia-smi >/dev/null && nvidia-smi >> "$OUT/gpu_check.log" 2>&1

# --- comparisons (no safetensors package needed: the format is a JSON header and raw little-endian arrays) -----
cat > "$WORK/compare.py" <<'EOF'
import json, struct, sys
import numpy as np

def load(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    kinds = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "I64": "<i8", "I32": "<i4", "U8": "u1", "U32": "<u4"}
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        if v["dtype"] == "BF16":
            raw = np.frombuffer(data[a:b], "<u2").astype(np.uint32) << 16
            arr = raw.view(np.float32)
        else:
            arr = np.frombuffer(data[a:b], kinds[v["dtype"]])
        out[k] = arr.astype(np.float64).reshape(v["shape"])
    return out

# compare.py NAME OURS KEY REF KEY ABS_TOL REL_TOL: prints one JSON line; exit 1 when over the tolerance.
name, ours, ok_, ref, rk, abs_tol, rel_tol = sys.argv[1:8]
a, b = load(ours)[ok_], load(ref)[rk]
if a.shape != b.shape:
    print(json.dumps({"check": name, "ok": False, "error": f"shape {a.shape} vs {b.shape}"}))
    sys.exit(1)
diff = float(np.abs(a - b).max())
scale = float(np.abs(b).max())
ok = diff <= float(abs_tol) if float(abs_tol) > 0 else diff <= float(rel_tol) * scale
print(json.dumps({"check": name, "ok": ok, "max_abs_diff": diff, "ref_max_abs": scale,
                  "rel": diff / max(scale, 1e-30), "abs_tol": float(abs_tol), "rel_tol": float(rel_tol)}))
sys.exit(0 if ok else 1)
EOF
FAILED=0
compare() {  # name ours key ref key abs_tol rel_tol
  local line
  line=$("$PYTHON" "$WORK/compare.py" "$@") || FAILED=$((FAILED + 1))
  [ -n "$line" ] || line="{\"check\": \"$1\", \"ok\": false, \"error\": \"compare failed\"}"
  record "$line"
  say "$line"
}
tol() {  # kind dtype -> "abs rel"
  case "$1:$2" in
    unet:f32|latent:f32) echo "1e-4 0" ;;
    compose:f32) echo "1e-3 0" ;;
    unet:f16|latent:f16) echo "0 2e-2" ;;
    unet:bf16|latent:bf16) echo "0 5e-2" ;;
    compose:f16) echo "0 5e-2" ;;
    compose:bf16) echo "0 1e-1" ;;
  esac
}
run_logged() {  # log-name command...: runs, appends its log to gpu_check.log, records a failure
  local name=$1 log="$WORK/$1.log" rc=0; shift
  "$@" > "$log" 2>&1 || rc=$?
  { echo "=== $name: $* (exit $rc)"; cat "$log"; } >> "$OUT/gpu_check.log"
  if [ "$rc" -ne 0 ]; then
    FAILED=$((FAILED + 1))
    say "FAILED: $name (exit $rc)"; tail -5 "$log" >&2
    record "{\"step\": \"$name\", \"ok\": false}"
    return 1
  fi
}

# --- parity ----------------------------------------------------------------------------------------------------
if [[ " $STEPS " == *" parity "* ]]; then
  F=tests/fixtures
  for dt in $DTYPES; do
    dev=(--device "$DEVICE" --dtype "$dt")
    for m in tiny modelscope_mini; do
      o="$WORK/unet3d_${m}_$dt.safetensors"
      run_logged "unet3d_${m}_$dt" "$VADAPT" debug forward --model "$F/unet3d/$m" \
        --inputs "$F/unet3d/$m/io.safetensors" --output "$o" "${dev[@]}" &&
        compare "unet3d/$m $dt" "$o" output "$F/unet3d/$m/io.safetensors" output $(tol unet "$dt")
    done
    for rule in composed cfg_mix; do
      o="$WORK/compose_${rule}_$dt.safetensors"
      run_logged "compose_${rule}_$dt" "$VADAPT" debug compose --adapter "$F/compose/adapter" \
        --prior "$F/compose/prior" --scheduler-config "$F/compose/scheduler_config.json" \
        --inputs "$F/compose/inputs.safetensors" --rule "$rule" --lam 0.4 --guidance 3.0 --steps 10 \
        --compose-min-t 100 --output "$o" "${dev[@]}" && {
        compare "compose/$rule xs $dt" "$o" xs "$F/compose/$rule.safetensors" xs $(tol compose "$dt")
        compare "compose/$rule x0 $dt" "$o" x0 "$F/compose/$rule.safetensors" x0 $(tol compose "$dt")
      }
    done
    o="$WORK/latent_$dt.safetensors"
    run_logged "latent_$dt" "$VADAPT" debug latent --fixtures "$F/parity" --output "$o" "${dev[@]}" && {
      compare "vae encode $dt" "$o" vae_latents_mean "$F/parity/vae_io.safetensors" latents_mean $(tol latent "$dt")
      compare "vae decode $dt" "$o" vae_decoded "$F/parity/vae_io.safetensors" decoded $(tol latent "$dt")
      compare "clip quick_gelu (f32 encoder; run $dt)" "$o" clip_last_hidden_state_quick_gelu \
        "$F/parity/clip_io.safetensors" last_hidden_state_quick_gelu $(tol latent f32)
    }
  done
  say "parity done at $(( $(date +%s) - T0 )) s"
fi

# --- vadapt bench at ModelScope size ---------------------------------------------------------------------------
CONFIG=benches/configs/modelscope_t2v_unet.json
if [[ " $STEPS " == *" bench "* ]]; then
  run_logged bench "$VADAPT" bench --unet-config "$CONFIG" --device "$DEVICE" --dtype "$BENCH_DTYPE" \
    --frames "$BENCH_FRAMES" --latent "$BENCH_LATENT" --reps "$REPS" --json "$OUT/bench.json" &&
    record_report bench "$OUT/bench.json"
  say "bench done at $(( $(date +%s) - T0 )) s"
fi

# --- diffusers on PyTorch, same config and shapes --------------------------------------------------------------
if [[ " $STEPS " == *" peer "* ]]; then
  SITE=/tmp/gpu_check_site
  if [ -f .peer/peer.tar.xz ]; then
    rm -rf "$SITE" && mkdir -p "$SITE"
    run_logged peer_install "$PYTHON" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
      .peer/peer.tar.xz "$SITE"
  fi
  cat > "$WORK/peer_unet.py" <<'EOF'
import json, sys, time
import torch
from diffusers import UNet3DConditionModel

config, device, dtype, frames, latent, reps = sys.argv[1:7]
h, w = map(int, latent.split("x"))
dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype]
cfg = json.load(open(config))
torch.manual_seed(7)
t0 = time.time()
with torch.device(device):  # initialise on the device: 1.4 B parameters on the CPU take a minute
    unet = UNet3DConditionModel.from_config(cfg)
unet = unet.to(dtype=dtype).eval()
init_s = time.time() - t0
params = sum(p.numel() for p in unet.parameters())
b = 2
x = torch.randn(b, cfg["in_channels"], int(frames), h, w, device=device, dtype=dtype)
ctx = torch.randn(b, 77, cfg["cross_attention_dim"], device=device, dtype=dtype)
t = torch.full((b,), 500.0, device=device)

def once():
    with torch.no_grad():
        out = unet(x, t, encoder_hidden_states=ctx).sample
    return float(out.float().sum())  # reads a number back: waits for the device, like vadapt's bench

once()
best = float("inf")
for _ in range(max(1, int(reps))):
    t0 = time.time()
    once()
    best = min(best, time.time() - t0)
print(json.dumps({"peer": "diffusers", "diffusers": __import__("diffusers").__version__,
                  "torch": torch.__version__, "sdpa": True, "device": device, "dtype": str(dtype),
                  "parameters": params, "frames": int(frames), "latent": latent, "init_s": init_s,
                  "seconds_per_guided_step": best,
                  "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None}))
EOF
  if PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" run_logged peer "$PYTHON" "$WORK/peer_unet.py" "$CONFIG" \
    "$DEVICE" "$BENCH_DTYPE" "$BENCH_FRAMES" "$BENCH_LATENT" "$REPS"; then
    tail -1 "$WORK/peer.log" > "$OUT/peer.json"
    record_report peer "$OUT/peer.json"
  fi
  say "peer done at $(( $(date +%s) - T0 )) s"
fi

# --- training steps per second (RLDS sample: JPEG frames, no FFmpeg) -------------------------------------------
if [[ " $STEPS " == *" train "* ]]; then
  # The demo's edge-to-sim recipe on the bundled RLDS episodes (rgb = the real camera), one episode held out.
  sed -e 's|^dataset = .*|dataset = "datasets/sample/rlds"|' \
    -e 's|^target_key = .*|target_key = "observation.images.sim"|' \
    -e 's|^condition_key = .*|condition_key = "observation.images.rgb"|' \
    -e 's|^holdout_episodes = .*|holdout_episodes = 1|' \
    pipelines/train_edge_to_sim.toml > "$WORK/train_rlds.toml"
  read -r S1 S2 <<< "$TRAIN_STEPS"
  declare -A SECS=()
  for n in "$S1" "$S2"; do
    rm -rf "$WORK/train_$n"
    t=$(now)
    run_logged "train_$n" "$VADAPT" train --config "$WORK/train_rlds.toml" --output "$WORK/train_$n" \
      --steps "$n" --device "$DEVICE" || break
    SECS[$n]=$("$PYTHON" -c "print(round($(now) - $t, 3))")
  done
  if [ -n "${SECS[$S2]:-}" ]; then
    # The difference of two runs cancels loading and the first step's set-up.
    sps=$("$PYTHON" -c "print(round(($S2 - $S1) / (${SECS[$S2]} - ${SECS[$S1]}), 3))")
    record "{\"step\": \"train\", \"ok\": true, \"steps\": [$S1, $S2], \"seconds\": [${SECS[$S1]}, ${SECS[$S2]}], \"steps_per_s\": $sps}"
    say "train: $sps steps/s ($S1 steps ${SECS[$S1]} s, $S2 steps ${SECS[$S2]} s)"
  fi
fi

# --- the demo pipeline on the device and on the CPU, same seeds (RLDS in: JPEG; images out: PNG; no FFmpeg) ------
if [[ " $STEPS " == *" pipeline "* ]]; then
  # The demo's real camera is observation.images.real in the LeRobot sample and observation.images.rgb in the RLDS
  # one; `codec` gives way to `storage` (model paths stay relative to the repository root, the working directory).
  sed -e 's|^image_key = .*|image_key = "observation.images.rgb"|' \
    -e 's|^codec = .*|storage = "images"   # PNG in the data parquet: no video I/O needed|' \
    pipelines/demo.toml > "$WORK/demo_images.toml"
  if ! grep -q '^storage = "images"' "$WORK/demo_images.toml" ||
    ! grep -q '^image_key = "observation.images.rgb"' "$WORK/demo_images.toml"; then
    say "FAILED: pipelines/demo.toml no longer has the image_key / codec lines this step rewrites"
    record '{"step": "pipeline", "ok": false, "error": "demo.toml changed"}'
    FAILED=$((FAILED + 1))
  else
    PIPE_EPISODES="${PIPE_EPISODES:-4}"
    # The CPU side samples 4 episodes at once (its output is the same bytes under any --threads), to keep it short.
    PIPE_CPU_THREADS="${PIPE_CPU_THREADS:-4}"
    declare -A PSECS=()
    for side in device cpu; do
      dev=$DEVICE threads=1; [ "$side" = cpu ] && dev=cpu threads=$PIPE_CPU_THREADS
      rm -rf "$WORK/pipeline_$side"
      t=$(now)
      run_logged "pipeline_$side" "$VADAPT" augment --pipeline "$WORK/demo_images.toml" \
        --input datasets/sample/rlds --output "$WORK/pipeline_$side" --limit "$PIPE_EPISODES" \
        --device "$dev" --dtype f32 --threads "$threads" --quiet || break
      PSECS[$side]=$("$PYTHON" -c "print(round($(now) - $t, 3))")
      say "pipeline on $dev ($threads sampler threads): ${PSECS[$side]} s for $PIPE_EPISODES episodes"
    done
    if [ -n "${PSECS[cpu]:-}" ]; then
      CAMS=$(sed -n 's|^name = "\(.*\)"|observation.images.\1|p' "$WORK/demo_images.toml")
      : > "$WORK/pipeline_cmp.jsonl"
      for cam in $CAMS; do
        run_logged "pipeline_eval_${cam##*.}" "$VADAPT" eval "$WORK/pipeline_device" --key "$cam" \
          --reference-dataset "$WORK/pipeline_cpu" --json "$WORK/cmp_${cam##*.}.json" &&
          "$PYTHON" -c 'import json, sys; r = json.load(open(sys.argv[2])); t = r["total"]
print(json.dumps({"camera": sys.argv[1], "psnr_db": t["psnr"], "ssim": t["ssim"],
                  "max_abs_diff": t["max_abs_diff"], "identical": t["identical"], "frames": t["frames"]}))' \
            "$cam" "$WORK/cmp_${cam##*.}.json" >> "$WORK/pipeline_cmp.jsonl"
      done
      line=$("$PYTHON" - "$WORK/pipeline_cmp.jsonl" "$DEVICE" "$PIPE_EPISODES" "${PSECS[device]}" \
        "${PSECS[cpu]}" "$(echo $CAMS | wc -w)" "$PIPE_CPU_THREADS" <<'EOF'
import json, sys
path, device, episodes, dev_s, cpu_s, n_cams, cpu_threads = sys.argv[1:8]
MIN_PSNR_DB = 40.0
cams = [json.loads(l) for l in open(path) if l.strip()]
for c in cams:
    c["ok"] = c["identical"] or (c["psnr_db"] is not None and c["psnr_db"] >= MIN_PSNR_DB)
eph = lambda s: round(int(episodes) * 3600.0 / float(s), 1)
ok = len(cams) == int(n_cams) and all(c["ok"] for c in cams)
print(json.dumps({"step": "pipeline", "ok": ok, "pipeline": "pipelines/demo.toml, storage = images",
                  "input": "datasets/sample/rlds", "episodes": int(episodes), "frames_per_episode": 24,
                  "dtype": "f32", "device": device, "seconds": {"device": float(dev_s), "cpu": float(cpu_s)},
                  "episodes_per_hour": {"device": eph(dev_s), "cpu": eph(cpu_s)},
                  "sampler_threads": {"device": 1, "cpu": int(cpu_threads)},
                  "min_psnr_db": MIN_PSNR_DB, "cameras": cams}))
sys.exit(0 if ok else 1)
EOF
) || FAILED=$((FAILED + 1))
      [ -n "$line" ] || line='{"step": "pipeline", "ok": false, "error": "comparison failed"}'
      record "$line"
      say "$line"
    fi
  fi
  say "pipeline done at $(( $(date +%s) - T0 )) s"
fi

# --- summary ---------------------------------------------------------------------------------------------------
ELAPSED=$(( $(date +%s) - T0 ))
"$PYTHON" - "$RESULTS" "$OUT/gpu_check.json" "$DEVICE" "$DTYPES" "$ELAPSED" "$FAILED" <<'EOF' || FAILED=$((FAILED + 1))
import json, sys
res, out, device, dtypes, elapsed, failed = sys.argv[1:7]
items = [json.loads(l) for l in open(res) if l.strip()]
json.dump({"device": device, "dtypes": dtypes.split(), "seconds": int(elapsed), "failed": int(failed),
           "ok": int(failed) == 0, "results": items}, open(out, "w"), indent=1)
EOF
rm -rf "$WORK"
say "$FAILED failed; $ELAPSED s; $OUT/gpu_check.json"
[ "$FAILED" -eq 0 ]
