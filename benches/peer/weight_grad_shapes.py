"""torch.mm at the convolution weight gradient's shapes, one thread: the peer of
`cargo run --release --example weight_grad_shapes` (dW (o, C*9) = dy (o, K) @ cols (K, C*9), cols stored transposed,
K = hw per image x 4 accumulated, or K = 4*hw joined), and torch's own conv2d weight gradient for the same 4 images
(torch.ops.aten.convolution_backward, what autograd runs), and its input gradient.

  .venv/bin/python benches/peer/weight_grad_shapes.py [reps]
"""
import sys, time
import torch

torch.set_num_threads(1)
reps = int(sys.argv[1]) if len(sys.argv) > 1 else 9
PER = 4


def med(f):
  f()
  ts = []
  for _ in range(reps):
    t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
  return sorted(ts)[len(ts) // 2]


for o, k9, hw, (h, w) in ((64, 576, 960, (24, 40)), (128, 1152, 240, (12, 20)), (256, 2304, 60, (6, 10))):
  c = k9 // 9
  dy = torch.randn(PER, o, hw)
  cols_t = torch.randn(PER, k9, hw)   # stored (C*9, hw): the im2col rows
  dw = torch.zeros(o, k9)
  def per_image():
    dw.zero_()
    for i in range(PER):
      dw.addmm_(dy[i], cols_t[i].t())
  dyj = dy.permute(1, 0, 2).reshape(o, PER * hw).contiguous()
  colsj = cols_t.permute(1, 0, 2).reshape(k9, PER * hw).contiguous()
  def joined():
    torch.mm(dyj, colsj.t(), out=dw)
  x = torch.randn(PER, c, h, w)
  wt = torch.randn(o, c, 3, 3)
  gy = torch.randn(PER, o, h, w)
  def conv_bw():
    torch.ops.aten.convolution_backward(gy, x, wt, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                        [False, True, False])
  def conv_bw_input():
    torch.ops.aten.convolution_backward(gy, x, wt, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                        [True, False, False])
  flop = 2.0 * o * k9 * hw * PER
  r = {n: med(f) for n, f in (("per image", per_image), ("joined", joined), ("conv backward (weight)", conv_bw),
                              ("conv backward (input)", conv_bw_input))}
  print(f"o {o:3} C*9 {k9:4} hw {hw:3}: " + ", ".join(f"{n} {t * 1e3:7.3f} ms ({flop / t / 1e9:5.0f} GFLOP/s)"
                                                         for n, t in r.items()))
