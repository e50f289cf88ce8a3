r"""A convolution's value and gradient: `layers.conv2d`'s kernel gradient as tap products against
XLA's own, shape by shape, on this machine (what `layers.taps_pay` decides from), and for 3x3
kernels at stride 1 and padding 1 by Winograd's F(4x4, 3x3) (`layers.WINOGRAD`), for odd
kernels of FFT_MIN_KERNEL and more at stride 1 both gradients by the FFT (`layers.FFT`), and
for kernels of PATCHES_MIN_KERNEL and more at stride 1 the kernel gradient as the patches'
product (`layers.PATCHES`, taken for thin inputs).

  python benchmarks/conv_gradient.py                        # the five families' layer shapes
  python benchmarks/conv_gradient.py --shape 8,64,128,128,3,1   # N,H,Cin,Cout,kernel,stride

Each shape is timed jitted (value and both gradients of sum(conv(x, k) * g)), the median of 7
calls after one, twice in alternating order, keeping each side's faster median. Prints the
per-tap work N*H'*W'*Cin*Cout beside the ratio taps / XLA, so the threshold
(`layers.MIN_WORK_FOR_TAPS`) can be checked on another machine; and Winograd / taps and FFT /
taps and patches / XLA where they apply ("-" elsewhere).
"""

import argparse
import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)
# pylint: disable=g-import-not-at-top,wrong-import-position
from jaxpose import huge_pages  # noqa: E402

# (name, N, H, Cin, Cout, kernel, stride): layers of the paper configs and the CPU quickstarts.
SHAPES = (
    ("hourglass 3x3 at 64 px", 8, 64, 128, 128, 3, 1),
    ("hourglass 3x3 at 8 px", 8, 8, 128, 128, 3, 1),
    ("hourglass 3x3 at 4 px", 8, 4, 128, 128, 3, 1),
    ("hourglass stem 3x3, 64 ch", 8, 128, 64, 64, 3, 1),
    ("hourglass 3x3 at 32 px", 8, 32, 128, 128, 3, 1),
    ("hourglass 3x3 at 16 px", 8, 16, 128, 128, 3, 1),
    ("CPM stage 7x7 at 46 px", 8, 46, 128, 128, 7, 1),
    ("CPM stage 2+ first 7x7", 8, 46, 185, 128, 7, 1),
    ("CPM first 9x9, on the image", 8, 368, 3, 128, 9, 1),
    ("CPM trunk 9x9 at 184 px", 2, 184, 128, 128, 9, 1),
    ("CPM trunk 9x9 at 92 px", 8, 92, 128, 128, 9, 1),
    ("CPM stage 11x11 at 46 px", 8, 46, 128, 128, 11, 1),
    ("Tompson bank 5x5 at 64 px", 8, 64, 128, 128, 5, 1),
    ("Tompson first 5x5 at 256 px", 8, 256, 3, 128, 5, 1),
    ("hourglass stem 7x7 / 2", 8, 256, 3, 64, 7, 2),
    ("Tompson bank 9x9 to 512", 8, 32, 128, 512, 9, 1),
    ("quickstart 5x5, 16 -> 32", 8, 64, 16, 32, 5, 1),
    ("quickstart 5x5, 32 -> 32", 8, 32, 32, 32, 5, 1),
    ("quickstart 7x7, 32 -> 64", 8, 32, 32, 64, 7, 1),
    ("quickstart 3x3, 16 -> 32", 8, 64, 16, 32, 3, 1),
    ("quickstart 5x5, 48 -> 96", 8, 16, 48, 96, 5, 1),
    ("IEF quickstart 3x3", 8, 16, 24, 32, 3, 1),
)


def measure(n, h, cin, cout, kernel, stride) -> dict:
  """{"xla": s, "taps": s, "work": N*H'*W'*Cin*Cout} for one shape, "winograd": s for a 3x3
  kernel at stride 1 (padding 1), "fft": s for an odd kernel of `layers.FFT_MIN_KERNEL` or more
  at stride 1 (padding k // 2), "patches": s for a kernel of `layers.PATCHES_MIN_KERNEL` or more
  at stride 1."""
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import backward  # pylint: disable=g-import-not-at-top
  from jaxpose.models import fft_conv, layers  # pylint: disable=g-import-not-at-top
  kx, kk, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (n, h, h, cin))
  k = jax.random.normal(kk, (kernel, kernel, cin, cout)) * 0.05
  pad = kernel // 2
  y = layers.lax_conv2d(x, k, stride, pad)
  g = jax.random.normal(kg, y.shape)
  # pylint: disable=protected-access
  gradients = {"taps": layers._conv2d_bwd_taps, "xla": layers._conv2d_bwd_xla}
  if (kernel, stride, pad) == (3, 1, 1):
    gradients["winograd"] = lambda stride, pad, x, k, dy: layers._conv2d_bwd_winograd(x, k, dy)
  if stride == 1 and kernel % 2 == 1 and kernel >= layers.FFT_MIN_KERNEL and fft_conv.fits(kernel):
    gradients["fft"] = lambda stride, pad, x, k, dy: layers._conv2d_bwd_fft(x, k, dy)
  if stride == 1 and kernel >= layers.PATCHES_MIN_KERNEL:
    gradients["patches"] = lambda stride, pad, x, k, dy: layers._conv2d_bwd_patches(pad, x, k, dy)
  best = {}
  for order in (tuple(gradients), tuple(reversed(gradients))):
    for side in order:
      fn = jax.jit(lambda x, k, bwd=gradients[side]: (layers.lax_conv2d(x, k, stride, pad),
                                                      bwd(stride, pad, x, k, g)))
      t = backward._seconds(fn, (x, k), 7)
      best[side] = min(best.get(side, t), t)
  # pylint: enable=protected-access
  best["work"] = layers.tap_work(k.shape, y.shape)
  return best


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shape", action="append", default=[],
                      help="N,H,Cin,Cout,kernel,stride (repeatable); default: SHAPES.")
  args = parser.parse_args(argv)
  huge_pages.reexec()
  shapes = [(s, *map(int, s.split(","))) for s in args.shape] or SHAPES
  from jaxpose.models import layers  # pylint: disable=g-import-not-at-top
  print(f"layers.MIN_WORK_FOR_TAPS = {layers.MIN_WORK_FOR_TAPS:,}")
  print("| layer | N, H, Cin -> Cout, kernel / stride | work a tap | XLA ms | taps ms | "
        "taps / XLA | Winograd ms | Winograd / taps | FFT ms | FFT / taps | patches ms | "
        "patches / XLA |")
  print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  for name, n, h, cin, cout, kernel, stride in shapes:
    r = measure(n, h, cin, cout, kernel, stride)
    winograd, fft, patches = (
        f"{r[m] * 1e3:.1f} | {r[m] / r['xla' if m == 'patches' else 'taps']:.2f}"
        if m in r else "- | -" for m in ("winograd", "fft", "patches"))
    print(f"| {name} | {n}, {h}, {cin} -> {cout}, {kernel} / {stride} | {r['work']:.2e} | "
          f"{r['xla'] * 1e3:.1f} | {r['taps'] * 1e3:.1f} | {r['taps'] / r['xla']:.2f} | "
          f"{winograd} | {fft} | {patches} |", flush=True)


if __name__ == "__main__":
  main()
