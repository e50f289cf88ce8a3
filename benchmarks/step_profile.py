r"""Where a config's train step spends its time, layer by layer, forward and backward.

  python benchmarks/step_profile.py                                 # the IEF quickstart's step
  python benchmarks/step_profile.py --config configs/hourglass_mpii.py:2 --steps 3 --depth 2
  python benchmarks/step_profile.py --config configs/quickstart.py:cpm --top 40 --out p.json

Builds the trainer's step for the config's first phase as `benchmarks/models.py` does (random
batch, the synthetic data set's skeleton; --device_augment feeds uint8 pixels as that script's
flag does), times --warmup + --timed steps, then records --steps steps under `jax.profiler` and
joins the trace's events (one per executed XLA instruction: a fusion, a library call such as a
YNNPACK convolution, a copy) with the compiled program's text, whose instructions carry the
source operation's name (`metadata={op_name=...}`: "jit(train_step)/jvp(Model)/stem/conv/...";
the backward pass's are under "transpose(...)"). Prints three tables, per step:

  layers   milliseconds by pass and layer path, cut to --depth module names: "fwd", "bwd"
           (the model's forward and backward passes), "-" (neither: the optimiser's update,
           the metrics), and "xla" rows for what XLA added without a source (layout copies,
           its own transposes), by instruction kind
  kinds    milliseconds and instruction count by kind (the name without its ".N" suffix)
  top      the --top instructions by time, with their shape and source operation

The milliseconds are the events' durations summed: where XLA runs two instructions at once (the
CPU runtime's thunks run concurrently where independent; each may also use the thread pool),
their sum exceeds the step's wall time, which is printed beside it. On a CPU, some of XLA's own
matrix products (kind "dot_general", Eigen's; the dense layers' kernel gradients among them)
record only their launch (~0.2 ms): their work runs on the pool beside the next instructions,
whose times then include it (a library product beside one took twice its time alone;
docs/performance_log.md, "Where the step's products go"). Compare rows of one run, not runs:
this machine's speed drifts by 10-20% within an hour. --out writes the same as JSON. With
--huge_pages on (the default) the script first starts itself again as train.py does
(`jaxpose.huge_pages`).
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
  sys.path.insert(0, _REPO)

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import models as bench
from jaxpose import huge_pages as huge_pages_lib

# An instruction of the compiled program's text (its name and result type), and the source
# operation named in its metadata.
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+)\s(.*)$", re.M)
_OP_NAME = re.compile(r"op_name=\"([^\"]*)\"")
_MODULE = re.compile(r"^HloModule ([^\s,]+)", re.M)
# Path components that name control flow or transformations, not layers.
_NOT_LAYERS = re.compile(r"^(cond|while|body|cond_computation|closed_call|remat|checkpoint|"
                         r"rematted_computation|branch_\d+_fun|pjit|jit\(.*\)|vmap\(.*\)|)$")


def instructions(*hlo_texts: str) -> dict[tuple[str, str], tuple[str, str]]:
  """(module, instruction name) -> (result type, source operation name or ""), over the
  programs' texts (a train step's two: `steps.TrainStep`), whose names may repeat."""
  program = {}
  for text in hlo_texts:
    module = _MODULE.search(text).group(1)
    for m in _INSTRUCTION.finditer(text):
      op_name = _OP_NAME.search(m.group(3))
      program[module, m.group(1)] = (m.group(2), op_name.group(1) if op_name else "")
  return program


def layer_of(op_name: str, depth: int) -> tuple[str, str]:
  """("fwd", "bwd" or "-", the first `depth` module names of the path) of a source operation
  name. The pass: "bwd" under transpose(...) (autodiff's backward pass), "fwd" under jvp(...)
  only, "-" under neither (the optimiser's update). The primitive (the last component) is
  dropped, as are transformations' wrappers and control flow (cond, while, remat)."""
  direction = ("bwd" if "transpose(" in op_name else "fwd" if "jvp(" in op_name
               else "-")  # "-": neither pass (the optimiser's update, metrics).
  path = op_name
  while True:  # Unwrap name(...) wrappers: jvp(Model) -> Model, transpose(jvp(Model)) -> Model.
    unwrapped = re.sub(r"\b(?:jvp|transpose|remat|checkpoint)\(([^()]*)\)", r"\1", path)
    if unwrapped == path:
      break
    path = unwrapped
  parts = [p for p in path.split("/")[:-1] if not _NOT_LAYERS.match(p)]  # Not jit(fn) either.
  return direction, "/".join(parts[:depth]) or "(no layer)"


def trace_events(log_dir: str) -> list[dict]:
  """The complete events ("ph": "X") of the newest profiler trace under `log_dir`."""
  files = sorted(glob.glob(os.path.join(log_dir, "**", "*.trace.json.gz"), recursive=True),
                 key=os.path.getmtime)
  if not files:
    raise FileNotFoundError(f"No *.trace.json.gz under {log_dir}: the profiler wrote no trace.")
  with gzip.open(files[-1]) as f:
    return [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]


def attribute(events: list[dict], program: dict[str, tuple[str, str]], steps: int,
              depth: int) -> dict:
  """Per-step milliseconds of the program's instructions: by (direction, layer), by kind, and
  by instruction. Events that are not the program's instructions (the runtime's own spans,
  Python) are left out."""
  layers, kinds, counts, ops = (collections.Counter() for _ in range(4))
  for e in events:
    name = e["name"]
    ident = (e.get("args", {}).get("hlo_module"), name)  # The runtime's events name both.
    if ident not in program:
      continue
    ms = e["dur"] / 1e3 / steps
    kind = re.sub(r"\.\d+$", "", name)
    op_name = program[ident][1]
    key = layer_of(op_name, depth) if op_name else ("xla", kind)
    layers[key] += ms
    kinds[kind] += ms
    counts[kind] += 1 / steps
    ops[ident] += ms
  return {"layers": layers, "kinds": kinds, "counts": counts, "ops": ops}


def report(result: dict, program: dict[tuple[str, str], tuple[str, str]], top: int,
           wall_ms: float) -> str:
  total = sum(result["kinds"].values())
  lines = [f"train step: {wall_ms:.2f} ms (median); instructions' time summed: {total:.2f} ms "
           f"per step, {sum(result['counts'].values()):.0f} instructions", "",
           "| ms | share | pass | layer |", "|---:|---:|---|---|"]
  for (direction, layer), ms in result["layers"].most_common():
    lines.append(f"| {ms:.2f} | {ms / total:.1%} | {direction} | {layer} |")
  lines += ["", "| ms | count | kind |", "|---:|---:|---|"]
  for kind, ms in result["kinds"].most_common():
    lines.append(f"| {ms:.2f} | {result['counts'][kind]:.0f} | {kind} |")
  lines += ["", "| ms | instruction | result | source |", "|---:|---|---|---|"]
  for (module, name), ms in result["ops"].most_common(top):
    shape, op_name = program[module, name]
    source = re.sub(r"^jit\(\w+\)/", "", op_name)
    lines.append(f"| {ms:.2f} | {name} | {shape} | {source} |")
  return "\n".join(lines)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--config", default="configs/quickstart.py:ief")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="Config overrides, as train.py's --config.KEY=VALUE.")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--timed", type=int, default=10, help="Steps timed for the median.")
  parser.add_argument("--steps", type=int, default=10, help="Steps recorded by the profiler.")
  parser.add_argument("--depth", type=int, default=3, help="Module names kept per layer path.")
  parser.add_argument("--top", type=int, default=25, help="Instructions listed by time.")
  parser.add_argument("--device_augment", action="store_true")
  parser.add_argument("--huge_pages", choices=("on", "off"), default="on")
  parser.add_argument("--out", help="JSON of the tables.")
  args = parser.parse_args(argv)
  if min(args.steps, args.timed, args.depth) < 1 or min(args.warmup, args.top) < 0:
    parser.error("--steps, --timed and --depth must be >= 1, --warmup and --top >= 0.")
  if args.huge_pages == "on":
    huge_pages_lib.reexec()
  import jax  # pylint: disable=g-import-not-at-top
  from jaxpose import steps  # pylint: disable=g-import-not-at-top
  config = bench.load_config(args.config, args.batch, tuple(args.set))
  host = bench.random_batch(args.batch, config.input_size)
  _, run = bench.jax_train(config, host, {"device_augment": args.device_augment})
  wall_ms = 1e3 * statistics.median(bench.time_calls(run, args.warmup, args.timed))
  program = instructions(*(p.as_text() for p in steps.step_programs(run.compiled)))
  with tempfile.TemporaryDirectory() as log_dir:
    jax.profiler.start_trace(log_dir)
    for _ in range(args.steps):
      run()
    jax.profiler.stop_trace()
    events = trace_events(log_dir)
  result = attribute(events, program, args.steps, args.depth)
  print(f"{args.config} {' '.join(args.set)}, batch {args.batch}, {jax.devices()[0].device_kind}")
  print(report(result, program, args.top, wall_ms))
  payload = {"config": args.config, "set": args.set, "batch": args.batch, "wall_ms": wall_ms,
             "layers": [{"pass": d, "layer": l, "ms": ms}
                        for (d, l), ms in result["layers"].most_common()],
             "kinds": [{"kind": k, "ms": ms, "count": result["counts"][k]}
                       for k, ms in result["kinds"].most_common()],
             "top": [{"module": m, "instruction": n, "ms": ms, "result": program[m, n][0],
                      "source": program[m, n][1]}
                     for (m, n), ms in result["ops"].most_common(args.top)]}
  if args.out:
    with open(args.out, "w") as f:
      json.dump(payload, f, indent=1)
  return payload


if __name__ == "__main__":
  main()
