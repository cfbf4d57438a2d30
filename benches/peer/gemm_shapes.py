"""torch.mm at the kernels' GEMM shapes: the peer of `cargo run --release --example gemm_shapes` (same (m, n, k)
list, row-major operands, median of `reps` calls after one warm-up).

  .venv/bin/python benches/peer/gemm_shapes.py [reps] [threads]
"""
import sys, time
import torch

reps = int(sys.argv[1]) if len(sys.argv) > 1 else 20
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
SHAPES = [(64, 960, 576), (128, 240, 1152), (256, 60, 2304), (15360, 512, 64), (15360, 64, 256), (1024, 1024, 1024)]
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
for m, n, k in SHAPES:
  a, b, c = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
  torch.mm(a, b, out=c)
  ts = []
  for _ in range(reps):
    t = time.perf_counter(); torch.mm(a, b, out=c); ts.append(time.perf_counter() - t)
  med = sorted(ts)[reps // 2]
  print(f"({m:5}, {n:4}, {k:4}): {med * 1e3:8.3f} ms, {2 * m * n * k / med / 1e9:6.0f} GFLOP/s")
