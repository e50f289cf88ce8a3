r"""jaxpose against PyTorch twins of the same networks, model by model: train-step time,
inference time, peak memory and the time from process start to the first training step.

  python benchmarks/models.py --torch            # the six paper-size models (hours on a CPU)
  python benchmarks/models.py --quick --models hourglass2 --torch                # a smoke run
  python benchmarks/models.py --configs configs/quickstart.py:cpm,configs/quickstart.py:hourglass
  python benchmarks/models.py --models hourglass2 --set remat=True   # train.py's --config.remat
  python benchmarks/models.py --models hourglass8 --frameworks torch --measure train,infer

--models picks paper configs by name (MODELS below; all six when neither --models nor --configs
is given); --configs adds any config spec, "file.py[:arg]" as train.py's --config takes it.
Every number comes from its own fresh process (`--child`), so compiled programs, allocator pools
and peak memory never carry over between measurements. Per model and framework:

  train step   median seconds per step over --steps timed steps after --warmup steps. jaxpose:
               `families.create_family`, `steps.create_train_state`, `steps.make_train_step`
               with the config's optimiser of its first phase (the trainer's own step, targets
               rendered inside it). PyTorch: forward, the config's heat-map loss summed over
               stacks / stages (targets rendered once on the host), backward, the config's
               optimiser (RMSProp 2.5e-4 for the hourglass, SGD momentum 0.9 with the release's
               per-layer multipliers for CPM).
  inference    median seconds of one forward pass on the batch, no flip test. jaxpose: the
               family's `predict` under jax.jit (decoding included); PyTorch: forward in eval
               mode under torch.no_grad().
  peak RSS     ru_maxrss of the training process after its timed steps (MB). Neither side
               imports a data loader: jaxpose's step (jaxpose.steps) needs no TensorFlow, which
               `train.py`'s tf.data pipeline adds (~0.5 GB, ~4.5 s to import here).
  first step   seconds from the process's start (/proc/self/stat) to its first training step
               done, imports included: cold (jaxpose: a fresh, empty persistent compilation
               cache) and warm (a second process on the same cache; PyTorch has no such cache,
               its second process only finds its files in the OS page cache). The records
               also give `ready_*_s`, from the start to the step in hand (the state made, the
               step compiled or read, its first call not yet made): the first call's time on
               a fresh process's memory varies by seconds on a virtual machine, which hides
               start-up changes of less. jaxpose's
               records also time the stages, as train.py starts: the step is traced and
               lowered, then compiles on a thread while the state is initialised
               (`startup_stages_*_s`: the abstract state, tracing and lowering, the
               initialiser, the wait for the compilation, releasing the initialiser's programs;
               `startup_step_stages_*_s`: the step's tracing, lowering and compiling, warm:
               reading it from the cache). A segmented step with programs kept (warm) is in
               hand before it is traced: its first call traces it, beside the programs it runs
               (`trace_beside`, the lowering included), so `ready_warm_s` leaves that out.
  temporaries  `step_temporaries_mb`: what XLA's buffer assignment gives the compiled step
               beside its arguments and outputs (its memory analysis), most of peak RSS.
  fusions      `step_library_fusions`: the step's fusions that XLA's CPU backend hands to a
               library (YNNPACK here), by root operation; every one is rebuilt when the step is
               read from the cache, most of the warm start's read. `step_calls`: all the calls
               of its CPU runtime (fusions, copies, products, loops), which that read also
               orders, in more than linear time (docs/performance_log.md, "Fewer calls in the
               step's program").

--frameworks (jax, torch) and --measure (train, infer, cold, warm) run part of these processes,
e.g. on an accelerator lent for minutes; what is not measured shows "-" and has no ratio. The
MFU columns then take the model FLOPs from a trace of jaxpose's forward pass in a process of its
own (JAX on the CPU, nothing run).

Batches are random and built on the host: uint8 pixels, given to both frameworks as the float32
input the host pipeline makes of them (pixels / 255 - 0.5), joints inside the crop, all
visible. No data set is read: every config gets the synthetic data set's skeleton (MPII's 16
joints). `--device_augment` instead feeds jaxpose the uint8 pixels and lets its train step
resample them (`config.resample_on_device`; the paper configs' default sends the uint8 crop,
whose colouring on the device costs ~0.15 ms an image), work the PyTorch step does not do.
PyTorch runs on the CPU with --threads threads (or on --torch_device cuda, cuDNN's autotuner
on), in NCHW (or, with --torch_channels_last, its NHWC memory format, often faster on CPUs);
JAX on its default device. With `--set mixed_precision=bfloat16` jaxpose computes in bfloat16
(float32 parameters and loss) and PyTorch runs under autocast to bfloat16 (AMP).

On an accelerator the table adds each side's peak device memory and, where the device's peak
is known (PEAK_TFLOPS: bfloat16 on H100 / H200 / A100 and TPU v4-v6e; else --peak_tflops), the
model-FLOPs utilisation: model FLOPs are the convolutions and matrix products of the forward
pass (`jaxpose.summary.matmul_flops`, the same network on both sides), a train step counted as
3x the forward pass. E.g. on one GPU:

  python benchmarks/models.py --models hourglass8 --torch --torch_device cuda \
      --set mixed_precision=bfloat16 --batch 32

Ratios are jaxpose / PyTorch: below 1, jaxpose is faster or smaller. Models without a PyTorch
twin (Tompson, DeepPose, IEF) show "-" there.

Writes --out (JSON: the machine, the settings, one record per model, rewritten after each
model) and the table next to it (.md), headed by the machine; prints the table.
"""

import argparse
import collections
import contextlib
import datetime
import importlib.metadata
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

_SCRIPT_START = time.time()  # Before any heavy import: the fallback for the process start.

import numpy as np  # noqa: E402  (after the clock above)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

# pylint: disable-next=g-import-not-at-top  (imports no JAX: the PyTorch children stay free of it)
from jaxpose import huge_pages as huge_pages_lib  # noqa: E402

# --models names -> config specs: the papers' recipes at their sizes.
MODELS = {
    "hourglass2": "configs/hourglass_mpii.py:2",
    "hourglass8": "configs/hourglass_mpii.py",
    "cpm": "configs/cpm_mpii.py",
    "tompson": "configs/tompson_mpii.py",
    "deeppose": "configs/deeppose_mpii.py",
    "ief": "configs/ief_mpii.py",
}
TORCH_TWINS = ("hourglass", "cpm")  # config.model.name values with a PyTorch twin.
SKELETON, NUM_JOINTS = "mpii", 16  # The synthetic data set's joints (datasets.NATIVE_SKELETON).
NUM_EXAMPLES = 22246  # The training-set size schedules are built for (MPII's); no effect on speed.
# The CPM release's Caffe lr_mult / decay_mult by (stage 1?, bias?), as jaxpose's CPM_LR_MULT
# (not imported: the PyTorch child never imports JAX).
CAFFE_LR_MULT = {(True, False): (5.0, 1.0), (True, True): (10.0, 0.0), (False, False): (1.0, 1.0),
                 (False, True): (2.0, 0.0)}
RECORD = "@@record "  # Prefix of the child's result line on stdout.
# The processes per model and framework (--measure): train step and peak RSS, inference, and the
# start-up with an empty, then a full persistent compilation cache.
MEASUREMENTS = ("train", "infer", "cold", "warm")
# Table columns: (heading, key in a framework's record, scale to the unit in the heading).
COLUMNS = (("train step (ms)", "train_step_s", 1e3),
           ("inference (ms)", "inference_s", 1e3),
           ("peak RSS (MB)", "peak_rss_mb", 1.0),
           ("first step, cold (s)", "first_step_cold_s", 1.0),
           ("first step, warm (s)", "first_step_warm_s", 1.0))
# Columns shown only where some record has them: an accelerator's peak memory, and model-FLOPs
# utilisation where the device's peak is known (PEAK_TFLOPS or --peak_tflops). Not in `ratios`.
ACCELERATOR_COLUMNS = (("peak device memory (MB)", "peak_device_mb", 1.0),
                       ("train MFU (%)", "train_mfu", 100.0),
                       ("inference MFU (%)", "inference_mfu", 100.0))
# Dense bfloat16 peaks (TFLOP/s) by device kind as JAX names it (first match of a substring),
# from the vendors' data sheets: NVIDIA's H100 / H200 SXM and A100 (tensor cores, without
# sparsity), Google's TPU v4, v5e ("TPU v5 lite"), v5p and v6e ("TPU v6 lite"). Other dtypes
# and devices: --peak_tflops.
PEAK_TFLOPS = (("H200", {"bfloat16": 989.4}), ("H100", {"bfloat16": 989.4}),
               ("A100", {"bfloat16": 312.0}), ("TPU v4", {"bfloat16": 275.0}),
               ("TPU v5 lite", {"bfloat16": 197.0}), ("TPU v5", {"bfloat16": 459.0}),
               ("TPU v6 lite", {"bfloat16": 918.0}))


# ---------------------------------------------------------------------------------------------
# Shared by both frameworks' children: the config, the batch, the clock.


def load_config(spec: str, batch_size: int, overrides: tuple[str, ...] = ()):
  """'file.py[:arg]' -> the locked ConfigDict train.py's --config would give (ml_collections'
  config_flags), with `overrides` ("remat=True": train.py's --config.remat=True), the
  benchmark's batch size and the synthetic data set's skeleton."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  values = flags.FlagValues()
  argv = ["models.py", f"--config={spec}"] + [f"--config.{o}" for o in overrides]
  config_flags.DEFINE_config_file("config", spec, "Config file.", flag_values=values,
                                  lock_config=True, sys_argv=argv)
  try:
    values(argv)
  except (AttributeError, KeyError, flags.Error) as e:
    if not overrides:
      raise
    raise ValueError(f"--set {' '.join(overrides)}: not a valid override of {spec} "
                     f"({type(e).__name__}: {e}).") from e
  config = values.config
  config.batch_size = batch_size
  config.dataset.skeleton = SKELETON
  return config


def random_batch(batch_size: int, size: int, num_joints: int = NUM_JOINTS, seed: int = 0) -> dict:
  """A host batch: uint8 pixels [B,S,S,3], joints [B,K,2] inside the crop, visible [B,K]."""
  rng = np.random.default_rng(seed)
  return {"pixels": rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8),
          "joints": rng.uniform(0.1 * size, 0.9 * size, (batch_size, num_joints, 2)).astype(
              np.float32),
          "visible": np.ones((batch_size, num_joints), np.float32)}


# The scripts that time the trainer's step two ways in one process, in alternating blocks of
# steps (keep_freed_memory.py, step_memory.py): their flags, set-up and order of blocks.
PAIRED_CONFIG = "configs/hourglass_mpii.py"


def paired_parser(doc: str) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=doc.split("\n")[0])
  parser.add_argument("--config", default=PAIRED_CONFIG)
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="Config overrides (none given: the paper config at 2 stacks).")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--blocks", type=int, default=4, help="Pairs of blocks.")
  parser.add_argument("--per_block", type=int, default=3, help="Timed steps per block.")
  parser.add_argument("--huge_pages", choices=("on", "off"), default="on")
  return parser


def paired_setup(args) -> tuple:
  """(config, host batch) for `paired_parser`'s parsed flags, after starting the process again
  as train.py does (`jaxpose.huge_pages`) where --huge_pages is on. The paper config without
  --set runs at 2 stacks (args.set then says so)."""
  if args.huge_pages == "on":
    huge_pages_lib.reexec()
  if not args.set and args.config == PAIRED_CONFIG:
    args.set = ["model.num_stacks=2"]
  config = load_config(args.config, args.batch, tuple(args.set))
  return config, random_batch(args.batch, config.input_size)


def paired_order(first, second, pairs: int) -> list:
  """What each of 2 * pairs blocks times: first, second, second, first, first, second, ..."""
  return [(first, second)[(b % 2) ^ (b // 2 % 2)] for b in range(2 * pairs)]


def paired_blocks(runs: dict, pairs: int, per_block: int, before_block=None) -> dict:
  """Times the two steps of `runs` ({label: one training step}, in order) in 2 * pairs
  alternating blocks (`paired_order`) of `per_block` steps each, after one untimed step per
  block (and `before_block(label)`, when given, before it), printing each block's times.
  Returns {label: [[seconds per step] per block]}."""
  labels = list(runs)
  blocks = {label: [] for label in labels}
  for block, label in enumerate(paired_order(*labels, pairs)):
    if before_block is not None:
      before_block(label)
    runs[label]()  # Not timed: the first step of a block.
    times = time_calls(runs[label], 0, per_block)
    blocks[label].append(times)
    print(f"block {block}: {label}", " ".join(f"{t:.4g}" for t in times), flush=True)
  return blocks


def float_images(pixels: np.ndarray) -> np.ndarray:
  """uint8 pixels -> the model input the host pipeline makes (pipeline.normalize)."""
  return pixels.astype(np.float32) / 255.0 - 0.5


def seconds_since_start() -> float:
  """Seconds since this process started (/proc/self/stat against /proc/uptime, 10 ms ticks);
  since this module started where /proc does not say (or says something implausible)."""
  fallback = time.time() - _SCRIPT_START
  try:
    with open("/proc/self/stat") as f:
      ticks = int(f.read().rpartition(")")[2].split()[19])  # Field 22, starttime.
    with open("/proc/uptime") as f:
      uptime = float(f.read().split()[0])
  except (OSError, ValueError, IndexError):
    return fallback
  elapsed = uptime - ticks / os.sysconf("SC_CLK_TCK")
  return elapsed if fallback <= elapsed < fallback + 60 else fallback


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux.


def relative_difference(a, b) -> float:
  """The largest absolute difference of two trees' leaves, over the largest |value| in b."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a, b = jax.tree.leaves(a), jax.tree.leaves(b)
  scale = max(float(jnp.abs(x).max()) for x in b)
  return max(float(jnp.abs(x - y).max()) for x, y in zip(a, b)) / max(scale, 1e-30)


def time_calls(fn, warmup: int, repeats: int) -> list[float]:
  """Seconds of each of `repeats` calls of `fn` after `warmup` untimed ones."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


# ---------------------------------------------------------------------------------------------
# jaxpose.


def _jax_count(tree) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _jax_train_batch(host: dict, device_augment: bool) -> dict:
  """The batch the trainer's step takes: the host pipeline's float32 images, or (with
  `device_augment`) the stored uint8 pixels with identity crop maps and unit colour gains."""
  from jaxpose.data import device_augment as aug  # pylint: disable=g-import-not-at-top
  b = len(host["pixels"])
  batch = {"joints": host["joints"], "visible": host["visible"],
           "transform": np.tile(np.eye(3, dtype=np.float32), (b, 1, 1))}
  if not device_augment:
    return dict(batch, image=float_images(host["pixels"]))
  return dict(batch, **{aug.PIXELS: host["pixels"],
                        aug.INVERSE: np.tile(np.eye(2, 3, dtype=np.float32), (b, 1, 1)),
                        aug.GAINS: np.ones((b, 3), np.float32)})


def jax_train(config, host: dict, task: dict):
  """(record fields, one training step) with the trainer's state, step and first phase."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxpose import families, optim, parallel, steps  # pylint: disable=g-import-not-at-top
  family = families.create_family(config)
  if family.target_fn is not None:
    raise NotImplementedError(f"{family.name}: host-side targets (Family.target_fn) are not "
                              "generated by this benchmark.")
  mesh = parallel.make_mesh()
  all_phases = optim.phases(config, NUM_EXAMPLES)
  phase = all_phases[0]
  tx = steps.create_optimizer(config, NUM_EXAMPLES, phase, layer_groups=family.layer_groups)
  clock = _Clock()
  # As train.py starts: the step is traced and lowered, then compiles on a thread
  # (steps.compile_ahead) while the state is initialised; then the initialiser's programs are
  # released. The step's stages (tracing, lowering, compiling or, when warm, reading the
  # persistent cache on the thread) are recorded apart.
  key = jax.random.key(config.seed)
  spec = steps.create_train_state(family, tx, key, mesh, abstract=True)
  clock.lap("abstract")
  batch = parallel.global_batch(_jax_train_batch(host, task["device_augment"]), mesh)
  rng, thread = jax.random.key(1), {}
  # The prefault and the kept step (as train.py's) only where this is the process's one step,
  # as in `measure`; the scripts that build two steps in a process (paired_configs.py,
  # step_memory.py) pass no kind: a second step's touched pages would stand beside the first's
  # state.
  first_step = task.get("kind") in ("train", "startup")
  step_fn = steps.make_train_step(family, mesh, phase, config.update_apart,
                                  config.segmented_step)
  compiling = steps.compile_ahead(step_fn, spec, batch, rng,
                                  laps=thread, prefault=first_step,
                                  keep=steps.step_label(config, phase) if first_step else None)
  clock.lap("trace_lower")
  state = jax.block_until_ready(steps.create_train_state(family, tx, key, mesh))
  clock.lap("init")
  step = compiling.result()
  clock.lap("compile_wait")
  families.release_compiled_programs()
  clock.lap("release")
  held = {"state": state}

  def run():
    held["state"], metrics = step(held["state"], batch, rng)
    jax.block_until_ready((held["state"], metrics))

  info = {"params": _jax_count(state.params), "device": jax.devices()[0].device_kind,
          "phase": f"{phase.name} (1 of {len(all_phases)})", "stages_s": clock.laps,
          "step_stages_s": thread}
  # After the timed steps and peak RSS: reading the program takes time and memory that
  # train.py does not spend (the 8-stack's memory analysis alone left ~470 MB resident, which
  # its step's peak then stood on; the 2-stack's took 0.44 s and ~120 MB).
  run.compiled = step

  def report():
    # The step's programs (`steps.TrainStep`: the gradients, then the optimiser's update):
    # their calls add up.
    texts = [p.as_text() for p in steps.step_programs(step)]  # The 2-stack's: 7 MB of text.
    fusions = collections.Counter()
    for text in texts:
      fusions.update(library_fusions(text))
    return {"step_temporaries_mb": temporaries_mb(step),
            "step_library_fusions": dict(sorted(fusions.items())),
            "step_calls": sum(runtime_calls(text) for text in texts), **jax_device_memory()}

  run.report = report
  return info, run


def temporaries_mb(compiled) -> float | None:
  """The temporaries XLA's buffer assignment gives a compiled program (its memory analysis:
  what one call allocates beside its arguments and outputs), MiB; None where the backend does
  not say. A train step's programs (`steps.TrainStep`) run one after the other: their largest."""
  from jaxpose import steps  # pylint: disable=g-import-not-at-top
  programs = steps.step_programs(compiled)
  if len(programs) > 1:
    sizes = [temporaries_mb(program) for program in programs]
    return None if None in sizes else max(sizes)
  try:
    analysis = compiled.memory_analysis()
  except (AttributeError, NotImplementedError, RuntimeError):
    return None
  size = getattr(analysis, "temp_size_in_bytes", None)
  return None if size is None else size / 2**20


def jax_device_memory() -> dict:
  """{"peak_device_mb": the first device's peak allocation} where the backend reports one (GPUs
  and TPUs; the CPU backend does not)."""
  import jax  # pylint: disable=g-import-not-at-top
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return {} if peak is None else {"peak_device_mb": peak / 2**20}


class _Clock:
  """Seconds between successive `lap` calls, by name."""

  def __init__(self):
    self.laps, self._last = {}, time.perf_counter()

  def lap(self, name: str) -> None:
    now = time.perf_counter()
    self.laps[name], self._last = round(now - self._last, 3), now


def library_fusions(hlo_text: str) -> dict[str, int]:
  """Fusions that XLA's CPU backend hands to a library (YNNPACK, XNNPACK, oneDNN) in an
  optimised HLO text, by kind and root operation: {"__ynn_fusion reduce": N, ...}. Each one is
  a thunk rebuilt whenever the executable is read from the persistent cache."""
  counts = {}
  for line in hlo_text.splitlines():
    kind = re.search(r'"kind":"(__\w+_fusion)"', line)
    if kind is None:
      continue
    op = re.search(r'op_name="[^"]*/(\w+)"', line)
    key = f"{kind.group(1)} {op.group(1) if op else '?'}"
    counts[key] = counts.get(key, 0) + 1
  return dict(sorted(counts.items()))


# Entry instructions that are no call of XLA's CPU runtime (no thunk of their own).
_NOT_CALLS = ("parameter", "constant", "tuple", "get-tuple-element", "bitcast")


def runtime_calls(hlo_text: str) -> int:
  """The calls (thunks) of XLA's CPU runtime in an optimised HLO text: its entry computation's
  instructions but parameters, constants, tuples and bitcasts."""
  entry = hlo_text[hlo_text.index("\nENTRY"):]
  entry = entry[:entry.index("\n}")]
  ops = (re.search(r" = .*?\s([a-z][a-z0-9\-]*)\(", line) for line in entry.splitlines()[1:])
  return sum(1 for op in ops if op is not None and op.group(1) not in _NOT_CALLS)


def jax_infer(config, host: dict, task: dict):
  """(record fields, one forward pass): the family's predict, jitted, without flip test."""
  del task
  import jax  # pylint: disable=g-import-not-at-top
  from jaxpose import families  # pylint: disable=g-import-not-at-top
  from jaxpose import summary  # pylint: disable=g-import-not-at-top
  family = families.create_family(config)
  variables = families.init_variables(family, jax.random.key(config.seed))
  predict = jax.jit(lambda v, b: family.predict(v, b, False))
  batch = {"image": jax.device_put(float_images(host["pixels"]))}

  def run():
    jax.block_until_ready(predict(variables, batch))

  # The model FLOPs of a forward pass on the batch (its convolutions and matrix products), from
  # which both frameworks' utilisation is computed: the twins compute the same network.
  flops = summary.matmul_flops(predict.trace(variables, batch).jaxpr)
  return {"params": _jax_count(variables["params"]), "device": jax.devices()[0].device_kind,
          "forward_flops": flops}, run


def jax_flops(config, host: dict, task: dict) -> dict:
  """{"params", "forward_flops"} of a forward pass on the batch, from `summary.summarize` (the
  family's predict traced on abstract variables: nothing initialised, compiled or run). For
  runs that measure PyTorch's utilisation without jaxpose's inference (--frameworks torch,
  --measure train)."""
  del task
  from jaxpose import summary  # pylint: disable=g-import-not-at-top
  facts = summary.summarize(config)  # Per image; the products' FLOPs scale with the batch.
  return {"params": facts["params"],
          "forward_flops": round(facts["gflops"] * 1e9) * len(host["pixels"])}


def _jax_imports(task: dict) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  if task.get("cache_dir"):  # Before anything compiles; every program is cached.
    jax.config.update("jax_compilation_cache_dir", task["cache_dir"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  # What the builders import (the step's modules; not TensorFlow, which only the input pipeline
  # needs, as torch's side imports no data loader): counted as import time.
  from jaxpose import families, steps  # noqa: F401  pylint: disable=g-import-not-at-top


# ---------------------------------------------------------------------------------------------
# PyTorch.


def torch_model(config):
  """The PyTorch twin of the config's model (the same layers and sizes), or None."""
  from benchmarks import torch_models  # pylint: disable=g-import-not-at-top
  kwargs = {k: v for k, v in config.model.items() if k != "name"}
  if config.model.name == "hourglass":
    kwargs = {k: kwargs[k] for k in ("num_stacks", "features", "depth", "num_blocks")
              if k in kwargs}
    return torch_models.StackedHourglass(num_joints=NUM_JOINTS, **kwargs)
  variant = kwargs.pop("variant", "original")
  if config.model.name == "cpm" and variant == "original":
    return torch_models.CPM(num_parts=NUM_JOINTS + 1, **kwargs)
  return None  # No twin (CPM's VGG variant among them): "-" in the torch columns.


def _center_map(batch_size: int, size: int) -> np.ndarray:
  """CPM's centre maps [B,1,S,S]: a Gaussian at the crop centre, sigma 21 px at 368 px."""
  g = np.exp(-np.square(np.arange(size) - (size - 1) / 2) / (2 * (21.0 * size / 368) ** 2))
  return np.broadcast_to(np.outer(g, g)[None, None], (batch_size, 1, size, size)).astype(
      np.float32)


def heatmap_targets(config, host: dict, background: bool):
  """Gaussian targets [B,K,h,w] at the config's output size and their weights [B,K]; with
  `background`, CPM's extra map (1 - max over the parts, weight 1) appended."""
  h, stride = config.output_size, config.input_size / config.output_size
  grid = np.arange(h, dtype=np.float32)
  xy = (host["joints"] + 0.5) / stride - 0.5  # [B,K,2] in heat-map pixels.
  gx = np.exp(-np.square(grid - xy[..., :1]) / (2 * config.sigma**2))  # [B,K,w]
  gy = np.exp(-np.square(grid - xy[..., 1:]) / (2 * config.sigma**2))  # [B,K,h]
  maps, weights = gy[..., :, None] * gx[..., None, :], host["visible"]
  if background:
    maps = np.concatenate([maps, 1.0 - maps.max(axis=1, keepdims=True)], axis=1)
    weights = np.concatenate([weights, np.ones_like(weights[:, :1])], axis=1)
  return maps.astype(np.float32), weights.astype(np.float32)


def torch_loss(kind: str, scale: float, targets, weights):
  """outputs (one map per stack / stage) -> the config's loss summed over them, as
  `jaxpose.family.heatmap_losses` computes it."""
  import torch  # pylint: disable=g-import-not-at-top
  k = NUM_JOINTS

  def loss(outputs):
    total = 0.0
    for pred in outputs:
      if kind == "softmax_ce":  # The parts only (CPM's background stays free).
        t = targets[:, :k].flatten(2)
        t = t / t.sum(-1, keepdim=True).clamp_min(1e-12)
        ce = -(t * torch.log_softmax(pred[:, :k].flatten(2), -1)).sum(-1)
        w = weights[:, :k]
        total = total + scale * (ce * w).sum() / w.sum().clamp_min(1.0)
      else:
        err = torch.square(pred - targets) * weights[:, :, None, None]
        total = total + scale * (err.mean() if kind == "mse" else 0.5 * err.sum() / len(pred))
    return total

  return loss


def torch_optimizer(model, opt):
  """The config's optimiser: RMSProp as jaxpose's (alpha 0.99, eps 1e-8), Adam, or SGD with
  momentum and L2 weight decay (with the Caffe release's per-layer multipliers when asked)."""
  import torch  # pylint: disable=g-import-not-at-top
  groups = [{"params": list(model.parameters())}]
  if opt.name == "sgd" and opt.get("caffe_lr_mult"):
    by_group = {}
    for name, p in model.named_parameters():
      by_group.setdefault((name.startswith("stage1."), name.endswith(".bias")), []).append(p)
    groups = [{"params": ps, "lr": opt.learning_rate * CAFFE_LR_MULT[g][0],
               "weight_decay": opt.weight_decay * CAFFE_LR_MULT[g][1]}
              for g, ps in by_group.items()]
  if opt.name == "rmsprop":
    return torch.optim.RMSprop(groups, lr=opt.learning_rate, alpha=0.99, eps=1e-8)
  if opt.name == "adam":
    return torch.optim.Adam(groups, lr=opt.learning_rate)
  if opt.name == "sgd":
    return torch.optim.SGD(groups, lr=opt.learning_rate, momentum=opt.momentum,
                           weight_decay=opt.weight_decay)
  raise ValueError(f"No PyTorch optimiser for config.optimizer.name {opt.name!r}.")


def _torch_inputs(config, host: dict, task: dict):
  """(model, NCHW inputs) of the config's twin on the host batch, on `task["torch_device"]`;
  with `task["channels_last"]`, both in PyTorch's NHWC memory format (the tensors' shapes stay
  NCHW)."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(task["threads"])
  model = torch_model(config)
  if model is None:
    raise ValueError(f"No PyTorch twin of {config.model.name!r}; twins: {TORCH_TWINS}.")
  inputs = [torch.from_numpy(float_images(host["pixels"]).transpose(0, 3, 1, 2).copy())]
  if config.model.name == "cpm":
    inputs.append(torch.from_numpy(_center_map(len(host["pixels"]), config.input_size)))
  device = task.get("torch_device", "cpu")
  model, inputs = model.to(device), [x.to(device) for x in inputs]
  if device.startswith("cuda"):
    torch.backends.cudnn.benchmark = True  # As PyTorch users train on GPUs.
  if task["channels_last"]:
    model = model.to(memory_format=torch.channels_last)
    inputs = [x.contiguous(memory_format=torch.channels_last) for x in inputs]
  return model, inputs


def torch_autocast(config, device: str):
  """The PyTorch counterpart of `config.mixed_precision`: autocast to bfloat16 (AMP) for
  "bfloat16", else a context that changes nothing."""
  import torch  # pylint: disable=g-import-not-at-top
  if config.mixed_precision == "bfloat16":
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
  return contextlib.nullcontext()


def _torch_synchronized(device: str, fn):
  """fn, then a wait for the device's queued work (CUDA runs asynchronously)."""
  import torch  # pylint: disable=g-import-not-at-top
  if not device.startswith("cuda"):
    return fn

  def run():
    fn()
    torch.cuda.synchronize(device)

  return run


def _torch_record(model, device: str) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_models  # pylint: disable=g-import-not-at-top
  name = torch.cuda.get_device_name(device) if device.startswith("cuda") else device
  return {"params": torch_models.num_params(model), "device": name}


def _torch_report(device: str):
  """What the train child adds after its timed steps: the device's peak memory (CUDA)."""
  import torch  # pylint: disable=g-import-not-at-top
  if not device.startswith("cuda"):
    return dict
  return lambda: {"peak_device_mb": torch.cuda.max_memory_allocated(device) / 2**20}


def torch_train(config, host: dict, task: dict):
  """(record fields, one training step): forward, loss, backward, optimiser step."""
  import torch  # pylint: disable=g-import-not-at-top
  model, inputs = _torch_inputs(config, host, task)
  device = task.get("torch_device", "cpu")
  model.train()
  targets, weights = heatmap_targets(config, host, background=config.model.name == "cpm")
  loss_fn = torch_loss(config.loss, config.get("loss_scale", 1.0),
                       torch.from_numpy(targets).to(device), torch.from_numpy(weights).to(device))
  optimizer = torch_optimizer(model, config.optimizer)

  def step():
    optimizer.zero_grad(set_to_none=True)
    with torch_autocast(config, device):
      loss = loss_fn(model(*inputs))
    loss.backward()
    optimizer.step()

  run = _torch_synchronized(device, step)
  run.report = _torch_report(device)
  return _torch_record(model, device), run


def torch_infer(config, host: dict, task: dict):
  """(record fields, one forward pass) in eval mode under torch.no_grad()."""
  import torch  # pylint: disable=g-import-not-at-top
  model, inputs = _torch_inputs(config, host, task)
  device = task.get("torch_device", "cpu")
  model.eval()

  def forward():
    with torch.no_grad(), torch_autocast(config, device):
      model(*inputs)

  return _torch_record(model, device), _torch_synchronized(device, forward)


def _torch_imports(task: dict) -> None:
  del task
  import torch  # noqa: F401  pylint: disable=g-import-not-at-top
  from benchmarks import torch_models  # noqa: F401  pylint: disable=g-import-not-at-top


# ---------------------------------------------------------------------------------------------
# One measurement (the child) and the processes that run them (the parent).

BUILDERS = {("jax", "train"): jax_train, ("jax", "infer"): jax_infer,
            ("torch", "train"): torch_train, ("torch", "infer"): torch_infer}
IMPORTS = {"jax": _jax_imports, "torch": _torch_imports}


def measure(task: dict) -> dict:
  """One measurement in this process, `task["kind"]` of "train" (step times, peak RSS),
  "infer" (forward times), "startup" (seconds from the process start to one step done) or
  "flops" (jaxpose only: the model FLOPs of a forward pass, traced, nothing run)."""
  IMPORTS[task["framework"]](task)
  record = {"import_s": seconds_since_start(), "import_rss_mb": peak_rss_mb()}
  config = load_config(task["spec"], task["batch"], tuple(task.get("overrides", ())))
  host = random_batch(task["batch"], config.input_size)
  if task["kind"] == "flops":
    return dict(record, **jax_flops(config, host, task))
  build = BUILDERS[task["framework"], "infer" if task["kind"] == "infer" else "train"]
  info, run = build(config, host, task)
  record.update(info)
  if task["kind"] == "startup":
    ready = seconds_since_start()  # The step in hand: the first call's own time is apart.
    run()
    return dict(record, ready_s=ready, first_step_s=seconds_since_start(),
                peak_rss_mb=peak_rss_mb())
  times = time_calls(run, task["warmup"], task["steps"])
  record.update(median_s=statistics.median(times), times_s=times, peak_rss_mb=peak_rss_mb())
  return dict(record, **getattr(run, "report", dict)())  # What the builder adds afterwards.


def child_environment(framework: str, huge_pages: str, cpu_only: bool = False) -> dict:
  """The measuring process's environment: jaxpose's as `train.py` and `eval.py` start
  themselves (with glibc's transparent huge pages where available, `jaxpose.huge_pages`,
  unless --huge_pages none);
  PyTorch's as given (the same huge pages too with --huge_pages both). `cpu_only`: JAX on the
  CPU (a process that only traces need not claim an accelerator)."""
  env = dict(os.environ)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if cpu_only:
    env["JAX_PLATFORMS"] = "cpu"
  if huge_pages == "both" or (huge_pages == "jaxpose" and framework == "jax"):
    env = huge_pages_lib.environment(env) or env
  return env


def spawn(task: dict, timeout: float | None = None) -> dict:
  """`measure(task)` in a fresh Python process: its record, or {"error": why}."""
  env = child_environment(task["framework"], task.get("huge_pages", "jaxpose"),
                          cpu_only=task["kind"] == "flops")
  try:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child",
                           json.dumps(task)], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout} s"}
  for line in reversed(proc.stdout.splitlines()):
    if line.startswith(RECORD):
      return json.loads(line[len(RECORD):])
  tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
  return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}


def measure_framework(framework: str, spec: str, args, label: str) -> dict:
  """Train, inference and cold / warm start-up of one model (those of --measure), each in a
  fresh process."""
  task = _task(framework, spec, args)
  runs = {kind: spawn(dict(task, kind=kind), args.timeout) for kind in ("train", "infer")
          if kind in args.measure}
  with tempfile.TemporaryDirectory(prefix="jaxpose_xla_cache_") as cache:
    for kind in ("cold", "warm"):  # The same empty directory, then full.
      if kind in args.measure:
        runs[kind] = spawn(dict(task, kind="startup", cache_dir=cache), args.timeout)
  train, infer, cold, warm = (runs.get(k, {}) for k in ("train", "infer", "cold", "warm"))
  out = {"params": train.get("params", infer.get("params")),
         "device": train.get("device", infer.get("device")),
         "forward_flops": infer.get("forward_flops"), "peak_device_mb": train.get("peak_device_mb"),
         "phase": train.get("phase"), "train_step_s": train.get("median_s"),
         "train_step_times_s": train.get("times_s"), "inference_s": infer.get("median_s"),
         "inference_times_s": infer.get("times_s"), "peak_rss_mb": train.get("peak_rss_mb"),
         "first_step_cold_s": cold.get("first_step_s"),
         "first_step_warm_s": warm.get("first_step_s"), "import_s": cold.get("import_s"),
         # From the process's start to the step in hand (state made, step compiled or read),
         # before its first call, whose time on a fresh process's memory varies by seconds.
         "ready_cold_s": cold.get("ready_s"), "ready_warm_s": warm.get("ready_s"),
         # Peak RSS up to the first step done (the warm start's with its prefault, if any).
         "first_step_cold_peak_rss_mb": cold.get("peak_rss_mb"),
         "first_step_warm_peak_rss_mb": warm.get("peak_rss_mb"),
         "import_rss_mb": train.get("import_rss_mb"),
         # jaxpose: the main thread's stages of each start-up run (abstract state, tracing and
         # lowering the step, init, the wait for the step's compilation, releasing the
         # initialiser's programs), and the step's own (trace, lower, compile or cache read).
         "startup_stages_cold_s": cold.get("stages_s"),
         "startup_stages_warm_s": warm.get("stages_s"),
         "startup_step_stages_cold_s": cold.get("step_stages_s"),
         "startup_step_stages_warm_s": warm.get("step_stages_s"),
         "step_library_fusions": train.get("step_library_fusions"),
         "step_calls": train.get("step_calls"),
         "step_temporaries_mb": train.get("step_temporaries_mb")}
  errors = {k: r["error"] for k, r in runs.items() if "error" in r}
  if errors:
    out["errors"] = errors
  _progress(f"{label} {framework}", out)
  return out


def _task(framework: str, spec: str, args, **fields) -> dict:
  """What a measuring process is told (its `kind` added by the caller)."""
  return dict(framework=framework, spec=spec, batch=args.batch, warmup=args.warmup,
              steps=args.steps, threads=args.threads, device_augment=args.device_augment,
              channels_last=args.torch_channels_last, overrides=list(args.set),
              torch_device=args.torch_device, huge_pages=args.huge_pages, **fields)


def _progress(label: str, record: dict) -> None:
  line = ", ".join(f"{h} {_cell(record.get(key), scale)}" for h, key, scale in COLUMNS)
  print(f"  {label}: {line}", file=sys.stderr, flush=True)
  for kind, error in record.get("errors", {}).items():
    print(f"    {kind} failed: {error}", file=sys.stderr, flush=True)


def ratios(jax_record: dict | None, torch_record: dict | None) -> dict:
  """jaxpose / PyTorch for every column both measured."""
  if not jax_record or not torch_record:
    return {}
  return {key: jax_record[key] / torch_record[key] for _, key, _ in COLUMNS
          if jax_record.get(key) is not None and torch_record.get(key)}


def peak_flops(device: str | None, dtype: str, tflops: float | None = None) -> float | None:
  """The device's peak FLOP/s for `dtype`: `tflops` (--peak_tflops) when given, else from
  PEAK_TFLOPS by the device's kind; None where neither says (a CPU, float32)."""
  if tflops:
    return tflops * 1e12
  for kind, peaks in PEAK_TFLOPS:
    if device and kind in device and dtype in peaks:
      return peaks[dtype] * 1e12
  return None


def utilisation(record: dict, forward_flops: int | None, peak: float | None,
                batch: int) -> dict:
  """A framework's images/s in training, and where the model FLOPs and the device's peak are
  known, its model-FLOPs utilisation: a train step counted as 3x the forward pass's FLOPs (the
  backward pass twice the forward's, the usual convention), inference as 1x."""
  out = {}
  if record.get("train_step_s"):
    out["train_images_per_s"] = batch / record["train_step_s"]
  if forward_flops and peak:
    for key, seconds, passes in (("train_mfu", "train_step_s", 3),
                                 ("inference_mfu", "inference_s", 1)):
      if record.get(seconds):
        out[key] = passes * forward_flops / record[seconds] / peak
  return out


def run_model(name: str, spec: str, config, args) -> dict:
  """One model's record: its config (`spec` loaded, with --set), the numbers of each framework
  of --frameworks (None for one not measured, or PyTorch where the family has no twin), the
  ratios, and where the device's peak is known each framework's model-FLOPs utilisation."""
  record = {"model": name, "config": os.path.relpath(spec, REPO), "family": config.model.name,
            "input_size": config.input_size, "batch": args.batch,
            "dtype": config.mixed_precision}
  print(f"{name}: {record['config']}", file=sys.stderr, flush=True)
  jax_r = measure_framework("jax", spec, args, name) if "jax" in args.frameworks else None
  twin = "torch" in args.frameworks and config.model.name in TORCH_TWINS
  torch_r = measure_framework("torch", spec, args, name) if twin else None
  record.update(jax=jax_r, torch=torch_r, ratios=ratios(jax_r, torch_r))
  peaks = {side: peak_flops(r.get("device"), config.mixed_precision, args.peak_tflops)
           for side, r in (("jax", jax_r), ("torch", torch_r)) if r}
  # The same network on both sides: the FLOPs from jaxpose's inference process, else (not
  # measured, and a peak to divide by) from a trace in a process of its own.
  flops = (jax_r or {}).get("forward_flops")
  if flops is None and any(peaks.values()):
    flops = spawn(_task("jax", spec, args, kind="flops"), args.timeout).get("forward_flops")
  record["forward_flops"] = flops
  for side, peak in peaks.items():
    record[side].update(utilisation(record[side], flops, peak, args.batch), peak_flops=peak)
  return record


# ---------------------------------------------------------------------------------------------
# The report.


def _cell(value, scale: float = 1.0, digits: int | None = None) -> str:
  if value is None:
    return "-"
  value *= scale
  digits = digits if digits is not None else (0 if value >= 100 else 1 if value >= 10 else 2)
  return f"{value:,.{digits}f}"


def machine() -> dict:
  """The CPU (from /proc/cpuinfo), its cores, the library versions and the date."""
  cpu = "unknown CPU"
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f
                  if line.startswith("model name")), cpu)
  except OSError:
    pass

  def version(package):
    try:
      return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      return None

  return {"cpu": cpu, "cores": os.cpu_count(), "jax": version("jax"),
          "jaxlib": version("jaxlib"), "torch": version("torch"),
          "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def markdown(records: list[dict], host: dict, settings: dict) -> str:
  """The table: per column jaxpose, PyTorch and their ratio; headed by the machine."""
  device = next((r["jax"]["device"] for r in records if (r["jax"] or {}).get("device")), "?")
  head = (f"{host['cpu']}, {host['cores']} cores; jax {host['jax']}, jaxlib {host['jaxlib']}, "
          f"torch {host['torch'] or '-'}; {host['date']}. Batch {settings['batch']}, "
          f"{settings['warmup']} warm-up + {settings['steps']} timed steps (medians), PyTorch "
          + (f"on {settings['threads']} threads" if settings.get("torch_device", "cpu") == "cpu"
             else f"on {settings['torch_device']}")
          + (" (channels_last)" if settings["torch_channels_last"] else "")
          + (", jaxpose resampling uint8 pixels in its step" if settings["device_augment"]
             else "")
          + "".join(f", --config.{o}" for o in settings.get("set", ())) + f"; jax on {device}"
          + {"jaxpose": "; jaxpose with transparent huge pages, as train.py / eval.py",
             "both": "; both with transparent huge pages", "none": ""}[
                 settings.get("huge_pages", "none")] + ".")
  columns = COLUMNS + tuple(c for c in ACCELERATOR_COLUMNS
                            if any((r[side] or {}).get(c[1]) is not None
                                   for r in records for side in ("jax", "torch")))
  if any(c[1].endswith("_mfu") for c in columns):
    head += (" MFU: a train step's model FLOPs (3x the forward pass's convolutions and matrix "
             "products) per second over the device's peak (" + ", ".join(sorted({
                 f"{r[side]['peak_flops'] / 1e12:g} TFLOP/s" for r in records
                 for side in ("jax", "torch") if (r[side] or {}).get("peak_flops")})) + ").")
  cols = "".join(f" {h}: jax | torch | jax/torch |" for h, _, _ in columns)
  lines = [head, "", "| model | params |" + cols,
           "|---|---:|" + "---:|---:|---:|" * len(columns)]
  for r in records:
    jax_r, torch_r = r["jax"] or {}, r["torch"] or {}
    cells = [f"{_cell(jax_r.get(key), scale)} | {_cell(torch_r.get(key), scale)} | "
             f"{_cell(r['ratios'].get(key), digits=2)}" for _, key, scale in columns]
    params = jax_r.get("params", torch_r.get("params"))
    lines.append(f"| {r['model']} | {_cell(params, digits=0)} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _write(path: str, host: dict, settings: dict, records: list[dict]) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump({"machine": host, "settings": settings, "models": records}, f, indent=1)
  with open(os.path.splitext(path)[0] + ".md", "w") as f:
    f.write(markdown(records, host, settings) + "\n")


# ---------------------------------------------------------------------------------------------
# Command line.


def _resolve(spec: str) -> str:
  """A config spec with its file as an absolute path (as given, else under the repository)."""
  path, sep, arg = spec.partition(":")
  if not os.path.exists(path) and os.path.exists(os.path.join(REPO, path)):
    path = os.path.join(REPO, path)
  if not os.path.exists(path):
    raise SystemExit(f"Config file {path!r} not found.")
  return os.path.abspath(path) + sep + arg


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--torch", action="store_true", help="Also time the PyTorch twins "
                      "(--frameworks jax,torch).")
  parser.add_argument("--frameworks", default=None,
                      help="Comma-separated, of jax,torch: whom to time (default jax; --torch "
                      "adds torch). E.g. --frameworks torch times the twins alone.")
  parser.add_argument("--measure", default=",".join(MEASUREMENTS),
                      help=f"Comma-separated, of {','.join(MEASUREMENTS)}: which of the four "
                      "processes per model and framework to run (default all; warm needs cold, "
                      "whose cache it reads). E.g. --measure train,infer skips the start-ups.")
  parser.add_argument("--models", help=f"Comma-separated, of {','.join(MODELS)}.")
  parser.add_argument("--configs", help="Comma-separated config specs, 'file.py[:arg]'.")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="A config override for every model, as train.py's "
                      "--config.KEY=VALUE (repeatable), e.g. --set remat=True.")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--warmup", type=int, default=3, help="Untimed steps / passes first.")
  parser.add_argument("--steps", type=int, default=10, help="Timed steps / passes.")
  parser.add_argument("--quick", action="store_true", help="2 warm-up + 3 timed: a smoke run.")
  parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                      help="PyTorch's threads (default: the cores this process may use).")
  parser.add_argument("--device_augment", action="store_true",
                      help="Feed jaxpose uint8 pixels that its train step resamples.")
  parser.add_argument("--torch_device", default="cpu",
                      help="Where the PyTorch twins run: cpu (default) or cuda[:N]. With "
                      "--set mixed_precision=bfloat16 they run under autocast to bfloat16.")
  parser.add_argument("--peak_tflops", type=float, default=None,
                      help="The device's peak TFLOP/s for the run's dtype, for the MFU columns "
                      "(default: PEAK_TFLOPS by device kind, bfloat16 only).")
  parser.add_argument("--torch_channels_last", action="store_true",
                      help="Run PyTorch in its NHWC memory format (default: NCHW, as the "
                      "reference implementations).")
  parser.add_argument("--huge_pages", choices=("jaxpose", "both", "none"), default="jaxpose",
                      help="Who runs with glibc's transparent huge pages (jaxpose.huge_pages): "
                      "jaxpose, as its train.py and eval.py start themselves (default); both "
                      "frameworks; neither.")
  parser.add_argument("--timeout", type=float, default=None,
                      help="Seconds allowed to each measuring process.")
  parser.add_argument("--out", default=os.path.join(REPO, "runs", "models_benchmark.json"))
  parser.add_argument("--child", help=argparse.SUPPRESS)  # A task (JSON): measure, print.
  args = parser.parse_args(argv)
  if args.quick:
    args.warmup, args.steps = 2, 3
  if args.warmup < 1 or args.steps < 1:
    parser.error("--warmup and --steps must be at least 1 (the first step compiles).")
  args.frameworks = _choices(parser, "--frameworks", (args.frameworks or "jax")
                             + (",torch" if args.torch else ""), ("jax", "torch"))
  args.torch = "torch" in args.frameworks
  args.measure = _choices(parser, "--measure", args.measure, MEASUREMENTS)
  if "warm" in args.measure and "cold" not in args.measure:
    parser.error("--measure warm needs cold: the warm start reads the cache the cold one fills.")
  return args


def _choices(parser, flag: str, value: str, known: tuple[str, ...]) -> tuple[str, ...]:
  """A comma-separated flag's items, in `known`'s order; an error names any other."""
  items = [v.strip() for v in value.split(",") if v.strip()]
  unknown = sorted(set(items) - set(known))
  if unknown or not items:
    parser.error(f"{flag} {value!r}: expected a comma-separated subset of {','.join(known)}.")
  return tuple(k for k in known if k in items)


def _selected(args) -> list[tuple[str, str]]:
  """(name, resolved spec) of every model asked for."""
  names = args.models.split(",") if args.models else ([] if args.configs else list(MODELS))
  unknown = sorted(set(names) - set(MODELS))
  if unknown:
    raise SystemExit(f"Unknown --models {unknown}; known: {', '.join(MODELS)}.")
  specs = [s for s in (args.configs or "").split(",") if s]
  return [(n, _resolve(MODELS[n])) for n in names] + [(s, _resolve(s)) for s in specs]


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.child:
    print(RECORD + json.dumps(measure(json.loads(args.child))), flush=True)
    return
  if args.torch:
    try:
      import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    except ImportError as e:
      raise SystemExit(f"--torch: PyTorch is not importable ({e}); pip install -r "
                       "requirements-torch.txt") from None
  models = _selected(args)
  if not models:
    raise SystemExit("No models: give --models and/or --configs.")
  try:  # Before any measurement: a bad --set stops here, named.
    configs = [load_config(spec, args.batch, tuple(args.set)) for _, spec in models]
  except ValueError as e:
    raise SystemExit(str(e)) from None
  host = machine()
  settings = {k: getattr(args, k) for k in ("batch", "warmup", "steps", "threads", "torch",
                                            "torch_channels_last", "device_augment", "set",
                                            "huge_pages", "torch_device", "peak_tflops",
                                            "frameworks", "measure")}
  records = []
  for (name, spec), config in zip(models, configs):
    records.append(run_model(name, spec, config, args))
    _write(args.out, host, settings, records)  # After each model: a long run keeps its part.
  print(markdown(records, host, settings))


if __name__ == "__main__":
  main()
