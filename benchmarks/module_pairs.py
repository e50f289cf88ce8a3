r"""One hourglass module's training gradient under two settings of `jaxpose.models.layers`, timed
in one process in alternating blocks.

  python benchmarks/module_pairs.py --a_layers WINOGRAD=False      # one stack of the 8-stack
  python benchmarks/module_pairs.py --module bottleneck --size 128 --features 128 \
      --a_layers WINOGRAD=False                  # a block at the stem's 128 px (128 wide)

A whole train step moves by 10-20% within an hour on this shared machine, more than a change to
one kind of layer can show; one module's gradient is shorter, so many more alternations fit. The
module (`hourglass.Stack`, as the segmented step runs each stack, or one `layers.Bottleneck`) is
built as in training (batch statistics, the recomputed BatchNorm-ReLU), its gradient for
parameters and input of a fixed linear function of its outputs jitted and traced once per side:
with --a_layers' constants for A's program, --b_layers' for B's (`paired_configs.layers_set`, as
`paired_configs.py`). Then blocks of --per_block calls alternate A, B, B, A, ... (the first call
of each block not timed). Prints each block's times, each side's median and B / A, in how many
pairs of blocks B was faster, and the largest difference of the two gradients relative to the
largest gradient.
"""

import argparse
import os
import statistics
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)
# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import models  # noqa: E402
from benchmarks import paired_configs  # noqa: E402
from jaxpose import huge_pages  # noqa: E402
# pylint: enable=g-import-not-at-top,wrong-import-position


def module_gradient(module: str, batch: int, size: int, features: int, joints: int):
  """(gradient, params, x): the module in training, its parameters (initialised once) and
  input; `gradient(params, x)`, for parameters and input, of a fixed linear function of its
  outputs."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxpose.models import hourglass, layers  # pylint: disable=g-import-not-at-top
  if module == "stack":
    net = hourglass.Stack(features, 4, 1, joints, last=False, recompute=True)
  else:
    net = layers.Bottleneck(features, recompute=True)
  keys = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(keys[0], (batch, size, size, features))
  variables = jax.jit(lambda key, x: net.init(key, x, train=False))(keys[1], x)
  weights = [jax.random.normal(keys[2], x.shape),
             jax.random.normal(keys[3], x.shape[:3] + (joints,))]

  def loss(params, x):
    outputs, _ = net.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                           train=True, mutable=["batch_stats"])
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    return sum(jnp.sum(y * w) for y, w in zip(outputs, weights))

  return jax.grad(loss, argnums=(0, 1)), variables["params"], x


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--module", choices=("stack", "bottleneck"), default="stack")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--size", type=int, default=64, help="The feature map's side.")
  parser.add_argument("--features", type=int, default=256)
  parser.add_argument("--joints", type=int, default=16, help="A stack's heat maps.")
  parser.add_argument("--blocks", type=int, default=4, help="Pairs of blocks.")
  parser.add_argument("--per_block", type=int, default=3, help="Timed calls per block.")
  parser.add_argument("--huge_pages", choices=("on", "off"), default="on")
  paired_configs.add_layers_flags(parser, "program")
  args = parser.parse_args(argv)
  if args.huge_pages == "on":
    huge_pages.reexec()
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  settings = paired_configs.sides_settings(parser, args)
  gradient, params, x = module_gradient(args.module, args.batch, args.size, args.features,
                                        args.joints)
  calls, gradients = {}, {}
  for side in ("A", "B"):
    with paired_configs.layers_set(settings[side]):  # JAX's caches cleared: traced afresh.
      calls[side] = jax.jit(gradient).lower(params, x).compile()
    gradients[side] = calls[side](params, x)
  runs = {side: (lambda call=call: jax.block_until_ready(call(params, x)))
          for side, call in calls.items()}
  blocks = models.paired_blocks(runs, args.blocks, args.per_block)
  medians = {side: [statistics.median(b) for b in blocks[side]] for side in runs}
  median = {side: statistics.median(m) for side, m in medians.items()}
  b_faster = sum(b < a for a, b in zip(medians["A"], medians["B"]))
  largest = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(gradients["A"]))
  difference = max(float(np.max(np.abs(a - b))) for a, b in zip(
      jax.tree.leaves(gradients["A"]), jax.tree.leaves(gradients["B"]))) / largest
  print(f"{args.module}, batch {args.batch}, {args.size} px, {args.features} features; "
        f"A: {' '.join(args.a_layers) or '(as is)'}; B: {' '.join(args.b_layers) or '(as is)'}")
  print(f"median A {median['A'] * 1e3:.1f} ms, B {median['B'] * 1e3:.1f} ms, B / A "
        f"{median['B'] / median['A']:.3f}; B faster in {b_faster} of {args.blocks} pairs of "
        f"blocks; gradients differ by {difference:.1e} of the largest")
  return {"median_s": median, "b_faster": b_faster, "difference": difference}


if __name__ == "__main__":
  main()
