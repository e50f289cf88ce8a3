r"""Two variants of a config's train step, timed in one process in alternating blocks.

  python benchmarks/paired_configs.py --config configs/quickstart.py:ief --b model.width_divisor=8
  python benchmarks/paired_configs.py --b remat=True --blocks 2           # the 2-stack hourglass
  python benchmarks/paired_configs.py --config configs/quickstart.py --b model.features=64 \
      --b model.depth=4 --per_block 20
  python benchmarks/paired_configs.py --set model.num_stacks=8 --a_layers WINOGRAD=False \
      --blocks 2 --per_block 2          # the tap products (A) against Winograd (B)

A is the config with --set's overrides; B is A with --b's on top (train.py's --config.KEY=VALUE
spelling, repeatable). Both steps are built as `benchmarks/models.py` builds the trainer's
(its first phase, a random batch) and compiled before any is timed; then blocks of
--per_block steps alternate A, B, B, A, A, B, ... (the first step of each block not timed). This
machine's speed drifts by 10-20% within an hour, so two processes one after the other cannot
tell a few per cent apart: on the IEF quickstart's step, a change that these alternating blocks
showed 1.08x slower in 8 of 8 pairs read 43.7-46.3 ms against 43.6-44.6 ms in three pairs of
processes (2026-12-05). Prints each block's times, then each side's median step and temporaries
(XLA's memory analysis), the ratio B / A and in how many pairs of blocks B was faster; A
against itself (no --b) shows the harness's own spread. --a_layers / --b_layers NAME=VALUE set
a constant of `jaxpose.models.layers` (a Python literal) while A's / B's step is traced: the
implementation choices made there at trace time (`WINOGRAD`, `MIN_WORK_FOR_TAPS`, ...), which
no config key names. With --huge_pages on (the default) the script first starts itself again as
train.py does (`jaxpose.huge_pages`).
"""

import ast
import contextlib
import os
import statistics
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)
# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import models  # noqa: E402
# pylint: enable=g-import-not-at-top,wrong-import-position

SIDES = ("A", "B")


def main(argv=None) -> dict:
  parser = models.paired_parser(__doc__)
  parser.add_argument("--b", action="append", default=[], metavar="KEY=VALUE",
                      help="B's overrides on top of A's (none: A against itself).")
  add_layers_flags(parser, "step")
  args = parser.parse_args(argv)
  settings = sides_settings(parser, args)
  config_a, host = models.paired_setup(args)
  try:
    config_b = models.load_config(args.config, args.batch, tuple(args.set) + tuple(args.b))
  except ValueError as e:
    parser.error(f"--b {' '.join(args.b)}: {e}")
  task = {"device_augment": False}
  runs = {}
  for side, config in (("A", config_a), ("B", config_b)):
    with layers_set(settings[side]):
      runs[side] = models.jax_train(config, host, task)[1]
  temporaries = {side: models.temporaries_mb(runs[side].compiled) for side in SIDES}
  blocks = models.paired_blocks(runs, args.blocks, args.per_block)
  block_medians = {side: [statistics.median(b) for b in blocks[side]] for side in SIDES}
  medians = {side: statistics.median(block_medians[side]) for side in SIDES}
  b_faster = sum(b < a for a, b in zip(block_medians["A"], block_medians["B"]))
  what = " ".join(args.b + [f"layers.{s}" for s in args.b_layers]) or "(A again)"
  if args.a_layers:
    what += f"; A: {' '.join(f'layers.{s}' for s in args.a_layers)}"
  print(f"{args.config} {' '.join(args.set)} batch {args.batch}; B: {what}")
  print(f"median step A {medians['A']:.4f} s, B {medians['B']:.4f} s, B / A "
        f"{medians['B'] / medians['A']:.3f}; B faster in {b_faster} of {args.blocks} pairs of "
        f"blocks; temporaries A {temporaries['A']:,.0f} MiB, B {temporaries['B']:,.0f} MiB")
  return {"median_step_s": medians, "block_medians_s": block_medians, "b_faster": b_faster,
          "temporaries_mb": temporaries}


def add_layers_flags(parser, what: str) -> None:
  """--a_layers / --b_layers NAME=VALUE (repeatable): constants of jaxpose.models.layers while
  A's / B's `what` is traced (`sides_settings`, `layers_set`)."""
  for side in ("a", "b"):
    parser.add_argument(f"--{side}_layers", action="append", default=[], metavar="NAME=VALUE",
                        help=f"A constant of jaxpose.models.layers while {side.upper()}'s "
                        f"{what} is traced (repeatable).")


def sides_settings(parser, args) -> dict:
  """{"A": settings, "B": settings} from `add_layers_flags`' flags; a bad one is the parser's
  error, naming it."""
  try:
    return {"A": layer_settings(args.a_layers), "B": layer_settings(args.b_layers)}
  except ValueError as e:
    parser.error(str(e))


def layer_settings(specs: list[str]) -> dict:
  """{name: value} from NAME=VALUE specs naming upper-case constants of jaxpose.models.layers."""
  from jaxpose.models import layers  # pylint: disable=g-import-not-at-top
  settings = {}
  for spec in specs:
    name, sep, value = spec.partition("=")
    if not sep or not name.isupper() or not hasattr(layers, name):
      raise ValueError(f"{spec}: not NAME=VALUE for a constant of jaxpose.models.layers")
    try:
      settings[name] = ast.literal_eval(value)
    except (ValueError, SyntaxError) as e:
      raise ValueError(f"{spec}: the value is not a Python literal") from e
  return settings


@contextlib.contextmanager
def layers_set(settings: dict):
  """jaxpose.models.layers' constants set as given, and back as they were after, with JAX's
  caches cleared on the way in and out: JAX keeps the traces of functions it has seen (a
  custom gradient's CPU branch, `layers.on_cpu`), so a constant read inside one would otherwise
  keep the value of the first trace."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxpose.models import layers  # pylint: disable=g-import-not-at-top
  before = {name: getattr(layers, name) for name in settings}
  for name, value in settings.items():
    setattr(layers, name, value)
  jax.clear_caches()
  try:
    yield
  finally:
    for name, value in before.items():
      setattr(layers, name, value)
    jax.clear_caches()


if __name__ == "__main__":
  main()
