r"""The stacked hourglass's train step as a program per kind of segment: a measurement of a step
the trainer does not run yet (docs/performance_log.md, "The stacks as programs of their own, a
third time").

  python benchmarks/stack_programs.py                          # 8 stacks, batch 8, 256 px
  python benchmarks/stack_programs.py --recompute              # BatchNorm-ReLU recomputed
  python benchmarks/stack_programs.py --config configs/hourglass_mpii.py:2
  python benchmarks/stack_programs.py --recompute --cache /tmp/sp    # twice: the second reads
  python benchmarks/stack_programs.py --recompute --ahead      # compiled on two threads first
  python benchmarks/stack_programs.py --config configs/quickstart.py:tiny \
      --set model.num_stacks=3 --batch 4 --check                # against train_step's values

Why: one XLA program for the 8-stack's step takes 20-30 s to compile and 20-25 s to read back
from the persistent cache on 2 cores, in time that grows faster than the program. Here the
segments are the stem (`hourglass.Stem`), the middle stacks and the last stack
(`hourglass.Stack`), each applied to its subtrees of the family's own variables. Each kind is
one jitted forward pass that returns its output, its share of the loss (the config's heat-map
loss on its stack's maps), its new BatchNorm statistics and its `jax.vjp`, whose residuals are
the program's outputs; one jitted backward pass applies any of them to its cotangents; the
optimiser's update is the trainer's own program (`steps.make_train_step`'s `update`). Alike
stacks share their programs, so an 8-stack compiles what a 2-stack does. A step: the targets
rendered once, the forward passes in order, the backward passes in reverse, the update. By
default each program compiles at its first call, one after the other; with --ahead all are
traced from the state's shapes and compiled on two threads while the state is made, as
train.py compiles its step (`steps.compile_ahead`).

Residuals are what a program boundary costs: inside one program XLA recomputes cheap
elementwise values (ReLU masks) that across programs are outputs. `--recompute` runs the
bottlenecks' BatchNorm-ReLU as `layers.bn_relu_conv` (`layers.Bottleneck.recompute`), which
keeps only each unit's input.

Prints one JSON line: the median step after the first, the first step (compiling, or with a
warm --cache reading, every program), the peak RSS, the seconds from the process's start to
its first step done, the programs compiled; with --check, the largest difference of the
parameters and statistics after the steps from `steps.train_step`'s, relative to the largest
value. The trainer's step for comparison, in the same hour: `python benchmarks/models.py
--models hourglass8 --frameworks jax --measure train --huge_pages none` (no huge pages here).
Random batch (`models.random_batch`), the family's initial variables, its first phase.
"""

import argparse
import json
import os
import statistics
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)
# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import models  # noqa: E402
# pylint: enable=g-import-not-at-top,wrong-import-position


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default=models.MODELS["hourglass8"],
                      help="An hourglass config spec, as train.py's --config.")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="Config overrides (train.py's --config.KEY=VALUE), repeatable.")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--steps", type=int, default=4, help="Steps, the first included.")
  parser.add_argument("--recompute", action="store_true",
                      help="The bottlenecks' BatchNorm-ReLU recomputed in the backward pass.")
  parser.add_argument("--cache", default=None, help="A persistent compilation cache folder.")
  parser.add_argument("--ahead", action="store_true",
                      help="Compile every program on two threads while the state is made "
                      "(from its shapes), as train.py compiles its step.")
  parser.add_argument("--check", action="store_true",
                      help="Also run steps.train_step as one program, from the same state.")
  return parser.parse_args(argv)


def _segments(family, recompute: bool):
  """[(kind, its variables' subtree, module)]: the stem (subtree None: the root's
  `hourglass.STEM_LAYERS` subtrees), then every stack; alike kinds share one module, hence one
  program per kind."""
  from jaxpose.models import hourglass  # pylint: disable=g-import-not-at-top
  model = family.model
  if not isinstance(model, hourglass.StackedHourglass):
    raise ValueError(f"{family.name}: only the stacked hourglass is cut into segments here.")
  kw = dict(init_scheme=model.init_scheme, dtype=model.dtype, recompute=recompute)
  stacks = {last: hourglass.Stack(model.features, model.depth, model.num_blocks,
                                  model.num_joints, last=last, **kw) for last in (False, True)}
  last = model.num_stacks - 1
  return [("stem", None, hourglass.Stem(model.features, **kw))] + [
      ("last" if i == last else "stack", f"stack{i}", stacks[i == last])
      for i in range(model.num_stacks)]


def _part(tree, subtree):
  """A segment's part of a root tree (params, statistics)."""
  from jaxpose.models import hourglass  # pylint: disable=g-import-not-at-top
  return {k: tree[k] for k in hourglass.STEM_LAYERS} if subtree is None else tree[subtree]


def _forward(module, loss_fn, has_input: bool):
  """jit: (params, statistics, x, targets) -> (output, loss, new statistics, vjp). The stem's
  vjp is of its parameters alone; a stack's of its parameters and its input x."""
  import jax  # pylint: disable=g-import-not-at-top

  def run(params, stats, x, targets):
    def apply(params, x):
      out, new = module.apply({"params": params, "batch_stats": stats}, x, True,
                              mutable=["batch_stats"])
      loss = 0.0
      if has_input:  # A stack: (its output, heat maps).
        out, heatmaps = out
        loss = loss_fn(heatmaps, targets)
      return (out, loss), new["batch_stats"]

    if has_input:
      (out, loss), vjp, new_stats = jax.vjp(apply, params, x, has_aux=True)
    else:  # The stem: no gradient for the images.
      (out, loss), vjp, new_stats = jax.vjp(lambda p: apply(p, x), params, has_aux=True)
    return out, loss, new_stats, vjp

  return jax.jit(run)


class SegmentedStep:
  """(state, batch) -> (state, metrics), as `steps.train_step` computes it, in segments."""

  def __init__(self, family, config, mesh, phase, recompute: bool):
    import jax  # pylint: disable=g-import-not-at-top
    from jaxpose import family as family_lib  # pylint: disable=g-import-not-at-top
    from jaxpose import steps  # pylint: disable=g-import-not-at-top
    self.segments = _segments(family, recompute)

    def loss_fn(heatmaps, targets):
      return family_lib.heatmap_losses((heatmaps,), targets, config.loss,
                                       scale=config.get("loss_scale", 1.0))[0]

    kinds = {kind: module for kind, _, module in self.segments}
    self.forward = {kind: _forward(module, loss_fn, kind != "stem")
                    for kind, module in kinds.items()}
    self.backward = jax.jit(lambda vjp, cotangents: vjp(cotangents))
    self.targets = jax.jit(lambda joints, visible: family.codec.render_targets(joints, visible))
    self.update = steps.make_train_step(family, mesh, phase).update
    self.update_args = steps.TrainStep.update_args
    self.compiled = {}  # (program, kind) -> its compiled executable, from `compile_ahead`.

  def _program(self, name: str, kind: str = ""):
    jitted = self.forward[kind] if name == "forward" else getattr(self, name)
    return self.compiled.get((name, kind), jitted)

  def compile_ahead(self, state, batch, threads: int = 2):
    """Traces and lowers every program from the shapes of `state` and `batch` (arrays or
    `jax.ShapeDtypeStruct`s; nothing runs), then compiles them on `threads` threads, as
    `steps.compile_ahead` does the trainer's two. A future; done, the step calls them."""
    import concurrent.futures  # pylint: disable=g-import-not-at-top
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from jaxpose import host_memory  # pylint: disable=g-import-not-at-top
    lowered = {("targets", ""): self.targets.lower(batch["joints"], batch["visible"])}
    targets = jax.eval_shape(self.targets, batch["joints"], batch["visible"])
    stats, x = state.model_state["batch_stats"], batch["image"]
    one, outputs = jax.ShapeDtypeStruct((), jnp.float32), {}
    for kind, subtree, _ in self.segments:
      if kind not in outputs:  # Alike segments: one trace, one program.
        traced = self.forward[kind].trace(
            _part(state.params, subtree), _part(stats, subtree), x, targets)
        outputs[kind], lowered["forward", kind] = traced.out_info, traced.lower()
        x, _, _, vjp = outputs[kind]
        lowered["backward", kind] = self.backward.lower(vjp, (x, one))  # x: its output's.
      x = outputs[kind][0]
    grads = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state.params)
    lowered["update", ""] = self.update.lower(*self.update_args(state, grads))
    pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="compile")
    futures = {key: pool.submit(program.compile) for key, program in lowered.items()}
    pool.shutdown(wait=False)

    def collect():
      self.compiled.update({key: future.result() for key, future in futures.items()})

    return host_memory.on_thread("compile_ahead", collect)

  def __call__(self, state, batch):
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    targets = self._program("targets")(batch["joints"], batch["visible"])
    stats, model_state = state.model_state["batch_stats"], state.model_state
    x, new_stats, vjps, loss = batch["image"], {}, [], 0.0
    for kind, subtree, _ in self.segments:
      x, part_loss, new, vjp = self._program("forward", kind)(
          _part(state.params, subtree), _part(stats, subtree), x, targets)
      new_stats.update(new if subtree is None else {subtree: new})
      vjps.append(vjp)
      loss = loss + part_loss
    # Backward, last segment first; the last stack's output is its input, which no later
    # segment reads.
    grads, x_cotangent = {}, jnp.zeros_like(x)
    for i in reversed(range(len(self.segments))):
      subtree = self.segments[i][1]
      got = self._program("backward", self.segments[i][0])(
          vjps[i], (x_cotangent, jnp.float32(1)))  # (params', x's cotangents)
      vjps[i] = None  # Its residuals go once used.
      if subtree is None:  # The stem: no input to differentiate.
        grads.update(got[0])
      else:
        grads[subtree], x_cotangent = got
    state = self._program("update")(*self.update_args(state, grads))
    return (state.replace(model_state={**model_state, "batch_stats": new_stats}),
            {"loss": loss})

  def programs(self) -> int:
    """The programs compiled so far (ahead, and in each jitted function's cache)."""
    fns = [*self.forward.values(), self.backward, self.targets, self.update]
    cached = sum(fn._cache_size() for fn in fns)  # pylint: disable=protected-access
    return len(self.compiled) + cached


def main(argv=None) -> dict:
  args = parse_args(argv)
  if args.steps < 1:
    raise SystemExit("--steps must be at least 1.")
  models.jax_imports({"cache_dir": args.cache})
  import jax  # pylint: disable=g-import-not-at-top
  from jaxpose import families, optim, parallel, steps  # pylint: disable=g-import-not-at-top
  config = models.load_config(args.config, args.batch, tuple(args.set))
  family, mesh = families.create_family(config), parallel.make_mesh()
  phase = optim.phases(config, models.NUM_EXAMPLES)[0]
  tx = steps.create_optimizer(config, models.NUM_EXAMPLES, phase,
                              layer_groups=family.layer_groups)

  def fresh():
    return steps.create_train_state(family, tx, jax.random.key(config.seed), mesh)

  host = models.random_batch(args.batch, config.input_size)
  batch = parallel.global_batch({"image": models.float_images(host["pixels"]),
                                 "joints": host["joints"], "visible": host["visible"]}, mesh)
  step = SegmentedStep(family, config, mesh, phase, args.recompute)
  compiling = None
  if args.ahead:
    abstract = steps.create_train_state(family, tx, jax.random.key(config.seed), mesh,
                                        abstract=True)
    compiling = step.compile_ahead(abstract, batch)
  state, times = fresh(), []
  if compiling is not None:
    compiling.result()
  for _ in range(args.steps):
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
    if len(times) == 1:
      first_done = models.seconds_since_start()
  record = {"config": args.config, "set": args.set, "batch": args.batch,
            "recompute": args.recompute, "cache": args.cache, "ahead": args.ahead,
            "step_s": statistics.median(times[1:]) if len(times) > 1 else None,
            "step_times_s": times, "first_step_s": times[0],
            "first_step_done_s": first_done, "peak_rss_mb": models.peak_rss_mb(),
            "programs": step.programs(), "loss": float(metrics["loss"])}
  if args.check:
    one = jax.jit(steps.train_step, static_argnames=("family",), donate_argnums=0)
    expected = fresh()
    for _ in range(args.steps):
      expected, _ = one(expected, batch, jax.random.key(0), family=family)
    record["relative_difference"] = models.relative_difference(
        (state.params, state.model_state), (expected.params, expected.model_state))
  print(json.dumps(record))
  return record


if __name__ == "__main__":
  main()
