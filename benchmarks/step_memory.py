r"""The train step with the gradients' residual work waiting for the backward pass, or not.

  python benchmarks/step_memory.py            # the 2-stack hourglass, batch 8, 4 pairs of blocks
  python benchmarks/step_memory.py --set model.num_stacks=8 --blocks 2
  python benchmarks/step_memory.py --config configs/quickstart.py:ief --batch 16 --per_block 20

`jaxpose.models.layers` makes the written-out gradients' work on their residuals (BatchNorm's
normalised input, a convolution's padded input) depend on the output gradient (`layers.after`).
Without that dependence XLA schedules the work in the forward pass and keeps its results alive
beside the residuals until the backward pass reads them. One process compiles the trainer's
step (`benchmarks/models.py`'s jaxpose side) both ways:

  after    as the library has it;
  hoisted  `layers.after` replaced by the identity while the step is traced (as before it;
           with --set remat=True this also undoes the recomputation of `layers.bn_relu_conv`,
           which waits the same way: XLA then merges it back into the forward pass).

and prints each program's temporaries (XLA's memory analysis: what a call allocates beside its
arguments and outputs), then times both in alternating blocks of steps (the first step of each
block not timed; this machine's speed drifts within minutes, so two processes one after the
other could not show a few per cent) and prints the medians. With --huge_pages on (the
default) the script starts itself again as train.py does (`jaxpose.huge_pages`).
"""

import os
import statistics
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)
# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import models  # noqa: E402
# pylint: enable=g-import-not-at-top,wrong-import-position

VARIANTS = ("after", "hoisted")


def compile_steps(config, host: dict) -> dict:
  """{variant: (record fields, one training step)}: the step traced with `layers.after` as it
  is, and with the identity in its place."""
  from jaxpose.models import layers  # pylint: disable=g-import-not-at-top
  task = {"device_augment": False}
  steps = {"after": models.jax_train(config, host, task)}
  after = layers.after
  layers.after = lambda x, dy: x
  try:
    steps["hoisted"] = models.jax_train(config, host, task)
  finally:
    layers.after = after
  return steps


def main(argv=None) -> dict:
  args = models.paired_parser(__doc__).parse_args(argv)
  config, host = models.paired_setup(args)
  steps = compile_steps(config, host)
  temporaries = {v: models.temporaries_mb(steps[v][1].compiled) for v in VARIANTS}
  for v in VARIANTS:
    print(f"{v}: temporaries {temporaries[v]:,.0f} MiB", flush=True)
  blocks = models.paired_blocks({v: steps[v][1] for v in VARIANTS}, args.blocks, args.per_block)
  medians = {v: statistics.median(t for block in blocks[v] for t in block) for v in VARIANTS}
  print(f"{args.config} {' '.join(args.set)} batch {args.batch}: temporaries "
        f"{temporaries['after']:,.0f} / {temporaries['hoisted']:,.0f} MiB "
        f"({temporaries['after'] / temporaries['hoisted']:.3f}); median step "
        f"{medians['after']:.3f} / {medians['hoisted']:.3f} s "
        f"({medians['after'] / medians['hoisted']:.3f}), after / hoisted")
  return {"temporaries_mb": temporaries, "median_step_s": medians}


if __name__ == "__main__":
  main()
