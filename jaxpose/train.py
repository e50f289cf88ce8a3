"""Training: phases, checkpoints and the loop around the step (steps.py: state and step).

Designed for many hosts and exact resumption from the start:
  * batches are a pure function of (seed, step, process) (see data/pipeline.py) and the step's
    key is fold_in(train key, step), the train key split from the seed apart from the init key,
    so a restart from a checkpoint at step s continues bit for bit;
  * the step is one jit over a ("data",) mesh: parameters replicated, batches sharded; only the
    family touches the model (`families.Family.loss`);
  * phases (a cascade's stages, IEF's fixed-path steps) run in order in the same loop, each with
    its own optimiser over its trainable subtrees, resumable anywhere; each phase's step
    compiles on a thread ahead of it (the first while the state is made, the others while the
    phase before trains);
  * orbax saves every process's shards; only process 0 writes logs and summaries;
  * a non-finite loss stops the run before anything is saved; a preemption notice (SIGTERM to
    any process) makes every process save at the same step and exit.
"""

import dataclasses
import time
from typing import Any

from absl import logging
from clu import metric_writers
from clu import periodic_actions
from etils import epath
import jax
import ml_collections
import numpy as np
import tensorflow as tf

from jaxpose import checkpoints
from jaxpose import config_checks
from jaxpose import evaluate
from jaxpose import families
from jaxpose import host_memory
from jaxpose import optim
from jaxpose import parallel
from jaxpose import preemption as preemption_lib
from jaxpose import steps
from jaxpose.data import datasets
from jaxpose.data import pipeline


# The step and its state live in steps.py (no TensorFlow there); re-exported here.
TrainState = steps.TrainState
NonFiniteLossError = steps.NonFiniteLossError
create_optimizer = steps.create_optimizer
create_train_state = steps.create_train_state
seed_keys = steps.seed_keys
train_step = steps.train_step
make_train_step = steps.make_train_step


# ---------------------------------------------------------------------------------------------
# The loop's pieces.


def _check_finite(history: list[tuple[int, dict]]) -> dict[str, float]:
  """Fetches a log interval's metrics once; raises at the first non-finite one."""
  steps = [s for s, _ in history]
  values = jax.device_get([m for _, m in history])
  for step, m in zip(steps, values):
    for name, v in m.items():
      if not np.isfinite(v):
        raise NonFiniteLossError(
            f"Non-finite {name}={float(v)} at step {step}; stopping. The last checkpoint "
            "before it is intact; lower the learning rate or check the input data.")
  return {k: float(np.mean([m[k] for m in values])) for k in values[0]}


@dataclasses.dataclass
class _Run:
  """What the loop's pieces share: set once, then only `state` changes."""

  config: ml_collections.ConfigDict
  workdir: epath.Path
  family: families.Family
  mesh: Any
  manager: Any
  writer: Any
  train_source: pipeline.Source
  eval_source: pipeline.Source
  phases: list[optim.Phase]
  init_key: jax.Array
  train_key: jax.Array
  preemption: preemption_lib.Preemption
  state: TrainState | None = None
  is_chief: bool = True
  _optimizers: dict = dataclasses.field(default_factory=dict)
  _abstract_states: dict = dataclasses.field(default_factory=dict)

  @property
  def num_steps(self) -> int:
    return self.phases[-1].end_step

  def optimizer(self, phase: optim.Phase):
    """The phase's optimiser: one object per phase, so states built apart (the compiled step's
    abstract one, the restored or initialised one) have the same tree."""
    if phase.index not in self._optimizers:
      self._optimizers[phase.index] = optim.create_optimizer(
          self.config, self.train_source.num_examples, phase,
          layer_groups=self.family.layer_groups)
    return self._optimizers[phase.index]

  def abstract_state(self, phase: optim.Phase) -> TrainState:
    """The shapes and shardings of a state with `phase`'s optimiser (traced once per phase):
    what a checkpoint is restored into, and what the step compiles for."""
    if phase.index not in self._abstract_states:
      self._abstract_states[phase.index] = create_train_state(
          self.family, self.optimizer(phase), self.init_key, self.mesh, abstract=True)
    return self._abstract_states[phase.index]


# Measured on an Intel Xeon with AMX, 2026-12-05 (docs/performance_log.md): XLA's CPU convolutions
# do not use AMX, PyTorch's oneDNN ones do.
BFLOAT16_ON_CPU = (
    "config.mixed_precision='bfloat16' on CPUs: XLA's CPU convolutions are no faster in "
    "bfloat16 than in float32, and the 2-stack hourglass's train step took 1.6x its float32 "
    "time (docs/performance_log.md). On CPUs, float32 trains faster.")


def _set_up(config, workdir: str, allow_inexact_resume: bool) -> _Run:
  """Checks, mesh, family, the workdir's compatibility and the data: before any state."""
  config_checks.check_config(config)
  workdir = epath.Path(workdir).absolute()
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  parallel.check_batch_size(config.eval_batch_size, mesh, what="config.eval_batch_size")
  is_chief = jax.process_index() == 0
  if is_chief and config.mixed_precision == "bfloat16" and parallel.is_cpu_mesh(mesh):
    logging.warning(BFLOAT16_ON_CPU)
  family = families.create_family(config)
  # Refuse a workdir of another model (or another recipe) before any expensive set-up.
  manager = checkpoints.manager(workdir / "checkpoints", config)
  if manager.latest_step() is not None:
    meta = checkpoints.read_meta(manager, manager.latest_step())
    checkpoints.check_compatible(meta, config, str(workdir),
                                 allow_inexact_resume=allow_inexact_resume)
  writer = (metric_writers.create_default_writer(str(workdir)) if is_chief
            else metric_writers.MultiWriter([]))
  train_source = datasets.load_training_source(
      config.dataset, input_size=family.input_size, augment=pipeline.Augment(**config.augment))
  eval_source = datasets.load_source(config.dataset, config.dataset.eval_split)
  all_phases = optim.phases(config, train_source.num_examples)
  return _Run(config, workdir, family, mesh, manager, writer, train_source, eval_source,
              all_phases, *seed_keys(config.seed), preemption_lib.Preemption(),
              is_chief=is_chief)


def _restore_or_init(run: _Run) -> int:
  """Sets run.state from the newest intact checkpoint, or initialises it. Returns the step."""
  latest = run.manager.latest_step()
  if latest is not None:
    # A checkpoint at a phase boundary holds the finished phase's optimiser state.
    phase = optim.phase_at(run.phases, max(latest - 1, 0))
    state, step = checkpoints.restore_latest_intact(run.manager, run.abstract_state(phase))
    if state is not None:
      run.state = state
      logging.info("Resumed from %s at step %d (phase %r).", run.workdir / "checkpoints",
                   step, phase.name)
      return step
  # The initialiser's per-operation programs are released once the step has compiled
  # (`_first_step_fn`): emptying JAX's caches meanwhile would race the compiling thread.
  run.state = create_train_state(run.family, run.optimizer(run.phases[0]), run.init_key,
                                 run.mesh)
  if run.is_chief:
    run.writer.write_hparams({k: v for k, v in run.config.to_dict().items()
                              if isinstance(v, (int, float, str, bool))})
  return 0


def _enter_phase(run: _Run, phase: optim.Phase, step: int) -> None:
  """Switches to `phase` at `step`: at its first step the family's phase hook runs and the
  phase's optimiser starts afresh; resumed inside it, the restored optimiser state is its own."""
  state, tx = run.state, run.optimizer(phase)
  if step == phase.first_step:
    if run.family.begin_phase is not None:
      variables = run.family.begin_phase(phase.index,
                                         {"params": state.params, **state.model_state},
                                         _phase_context(run))
      params, model_state = families.split_variables(variables)
      state = state.replace(params=params, model_state=model_state)
    opt_state = jax.jit(tx.init, out_shardings=parallel.replicated(run.mesh))(state.params)
    state = state.replace(opt_state=opt_state)
  run.state = state.replace(tx=tx)
  if len(run.phases) > 1:
    logging.info("Phase %d/%d %r: steps %d-%d, training %s.", phase.index + 1,
                 len(run.phases), phase.name, phase.first_step, phase.end_step,
                 "everything" if phase.trainable is None else ", ".join(phase.trainable))


def _phase_context(run: _Run) -> families.PhaseContext:
  """What a family's phase hook may use: the training split's ground truth, and predictions
  on a fixed random sample of it (`config.phase_sample` people; no augmentation, no flip
  test), in crop pixels, with the ground truth in the same frame."""
  source, size = run.train_source, run.family.input_size
  ann = source.annotations
  warps = pipeline.crop_transform(ann["center"], ann["scale"], 0.0, size)
  gt = pipeline.transform_points(warps, ann["joints"].astype(np.float32)).numpy()
  n = min(source.num_examples, run.config.get("phase_sample", 2048))
  sample = np.sort(np.random.default_rng(run.config.seed).permutation(source.num_examples)[:n])

  def predict_train(variables):
    joints, _ = evaluate.predict_split(
        variables, run.family, pipeline.subset(source, sample), run.mesh, frame="crop",
        flip_test=False, local_batch_size=run.config.eval_batch_size // jax.process_count())
    return joints, gt[sample], ann["visible"][sample]

  return families.PhaseContext(ground_truth=(gt, ann["visible"]), predict_train=predict_train)


def _train_dataset(run: _Run, start_step: int) -> tf.data.Dataset:
  config = run.config
  return pipeline.train_dataset(  # run.train_source is pre-cropped when config.dataset.precrop.
      run.train_source, input_size=run.family.input_size, target_fn=run.family.target_fn,
      augment=pipeline.Augment(**config.augment), global_batch_size=config.batch_size,
      seed=config.seed, start_step=start_step, process_index=jax.process_index(),
      process_count=jax.process_count(), on_device=config.augment_on_device,
      resample_on_device=config.get("resample_on_device", False))


@dataclasses.dataclass
class _Ahead:
  """The train step of one phase, compiling on a thread since before the state existed."""

  phase: int
  compiled: Any  # A future of the jax.stages.Compiled.


def _compile_ahead(run: _Run, step: int, local: dict, first: bool = False) -> _Ahead | None:
  """Starts compiling the step of the phase `step` is in, for the state that phase trains and
  this process's batches (`local`: {key: (shape, dtype)}), while the caller does something
  else: initialises or restores the state, or trains the phase before (`_loop`). `first`: the
  process's first step, whose memory is touched ahead (`prefault`) and whose program is kept
  for the next process (`keep`; both in `steps.compile_ahead`)."""
  if step >= run.num_steps:
    return None
  phase = optim.phase_at(run.phases, step)
  return _Ahead(phase.index, steps.compile_ahead(
      _make_step(run, phase), run.abstract_state(phase),
      parallel.global_batch_spec(local, run.mesh), jax.random.fold_in(run.train_key, step),
      prefault=first, keep=steps.step_label(run.config, phase) if first else None))


def _local_spec(dataset: tf.data.Dataset) -> dict:
  """{key: (shape, dtype)} of this process's batches, from the dataset's element spec."""
  return {k: (tuple(spec.shape), spec.dtype.as_numpy_dtype)
          for k, spec in dataset.element_spec.items()}


def _step_fn(run: _Run, phase: optim.Phase, ahead: _Ahead | None):
  """The compiled step of `phase`: the one compiled ahead if it is that phase's (not when an
  earlier checkpoint of another phase was restored), else compiled now."""
  compiled = None if ahead is None else ahead.compiled.result()
  if ahead is not None and ahead.phase == phase.index:
    return compiled
  _discard(ahead)
  return _make_step(run, phase)


def _make_step(run: _Run, phase: optim.Phase):
  """The phase's jitted step: one program, two, or a program per kind of segment, as the
  config says (`update_apart`, `segmented_step`)."""
  return make_train_step(run.family, run.mesh, phase, run.config.update_apart,
                         run.config.segmented_step)


def _discard(ahead: _Ahead | None) -> None:
  """A step compiled ahead that will not run: the memory touched for its first call (the
  process's first step: `steps.compile_ahead`'s prefault), if any, is handed back."""
  def release(future):
    if future.exception() is None:
      _release(future.result())

  if ahead is not None:
    ahead.compiled.add_done_callback(release)


def _release(step_fn) -> None:
  """Hands back what a step holds between its calls: memory touched for a first call that has
  not come (`steps.compile_ahead`'s prefault), a segmented step's residual buffers
  (`steps.SegmentedStep`; it makes them again at its next call)."""
  if isinstance(step_fn, (host_memory.FirstCall, steps.TrainStep, steps.SegmentedStep)):
    step_fn.release()


def _first_step_fn(run: _Run, phase: optim.Phase, ahead: _Ahead | None):
  """The compiled step of the loop's first phase (`_step_fn`). Then, the thread done, the
  initialiser's programs are released."""
  step_fn = _step_fn(run, phase, ahead)
  families.release_compiled_programs()  # This process owns its JAX state.
  return step_fn


def _log(run: _Run, step: int, history, last_log) -> tuple[int, float]:
  means = _check_finite(history)
  now = time.time()
  rate = (step - last_log[0]) / max(now - last_log[1], 1e-9)
  bs = run.config.batch_size
  run.writer.write_scalars(step, {f"train/{k}": v for k, v in means.items()}
                           | {"train/images_per_sec": rate * bs})
  if run.is_chief:
    logging.info("step %d/%d  loss %.5f  %.2f steps/s  %.1f images/s  ETA %s", step,
                 run.num_steps, means["loss"], rate, rate * bs,
                 _eta((run.num_steps - step) / max(rate, 1e-9)))
  return step, now


def _evaluate(run: _Run, step: int, predict_step) -> dict | None:
  """Evaluates the current state; None when a preemption notice interrupted it."""
  config = run.config
  state = run.state
  try:
    table, _, _ = evaluate.evaluate(
        {"params": state.params, **state.model_state}, run.family, run.eval_source, run.mesh,
        local_batch_size=config.eval_batch_size // jax.process_count(),
        flip_test=config.flip_test, predict_step=predict_step,
        should_stop=run.preemption.reached)
  except evaluate.Interrupted:
    logging.warning("Evaluation at step %d interrupted by a preemption notice.", step)
    return None
  run.writer.write_scalars(step, {f"eval/pckh_{k}": v for k, v in table.items()})
  return table


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_inexact_resume: bool = False) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming from its newest intact checkpoint). Returns the
  last evaluation's table."""
  run = _set_up(config, workdir, allow_inexact_resume)
  # The step compiles for the newest checkpoint's step while the state is restored (or made).
  planned = run.manager.latest_step() or 0
  dataset = _train_dataset(run, planned)
  local = _local_spec(dataset)  # The same for every phase and every restart's dataset.
  ahead = _compile_ahead(run, planned, local, first=True)
  step = _restore_or_init(run)
  if step >= run.num_steps:  # Before the input pipeline starts reading.
    _discard(ahead)
    logging.info("Already trained: step %d of %d; nothing to do (`python eval.py --ckpt %s` "
                 "evaluates it).", step, run.num_steps, run.workdir)
    return {}
  if step != planned:  # The newest checkpoint was damaged: an earlier one was restored.
    dataset = _train_dataset(run, step)
  train_iter = dataset.as_numpy_iterator()
  run.preemption.install()
  logging.info("Training %s for %d steps (%d per epoch) on %d devices, batch %d.",
               run.family.name, run.num_steps,
               optim.steps_per_epoch(config, run.train_source.num_examples),
               run.mesh.devices.size, config.batch_size)
  table = _loop(run, step, train_iter, local, ahead)
  run.manager.wait_until_finished()
  run.writer.flush()
  return table or {}


def _loop(run: _Run, step: int, train_iter, local: dict,
          ahead: _Ahead | None = None) -> dict | None:
  """Trains from `step` to the end; `local`: this process's batch spec (`_local_spec`)."""
  config = run.config
  report = (periodic_actions.ReportProgress(num_train_steps=run.num_steps, writer=run.writer,
                                            every_steps=config.log_every_steps)
            if run.is_chief else lambda step: None)
  predict_step = evaluate.make_predict_step(run.family, run.mesh, config.flip_test)
  history, table, last_log = [], None, (step, time.time())
  clock = _Clock()
  phase, step_fn = None, None
  while step < run.num_steps:
    if phase is None or step >= phase.end_step:
      phase = optim.phase_at(run.phases, step)
      _enter_phase(run, phase, step)
      # The step compiled ahead, if it is this phase's: the loop's first one compiled while
      # the state was made, the others while the phase before trained (below).
      step_fn = (_first_step_fn if step_fn is None else _step_fn)(run, phase, ahead)
      ahead = None
    batch = parallel.global_batch(_next_batch(run, train_iter, step), run.mesh)
    run.state, metrics = step_fn(run.state, batch, jax.random.fold_in(run.train_key, step))
    if ahead is None and phase.end_step < run.num_steps:
      # After this phase's first step (its own compilation done), the next phase's step
      # compiles on a thread while this phase trains: on a CPU, the cores the step leaves idle.
      ahead = _compile_ahead(run, phase.end_step, local)
    step += 1
    history.append((step, metrics))
    report(step)
    if step == phase.end_step and config.get("precise_bn_batches", 0):
      _release(step_fn)  # Not held beside PreciseBN's program (the whole loss, apart).
      run.state = _precise_batch_stats(run, phase, step)
    stop = run.preemption.reached(step)
    last = step == run.num_steps
    if step % config.log_every_steps == 0 or last or stop:
      last_log = _log(run, step, history, last_log)
      history = []
    pckh = None
    if not stop and (step % config.eval_every_steps == 0 or last):
      # Not held through the evaluation: the 8-stack's 3.9 GB of residual buffers raised the
      # peak RSS of an evaluation at batch 48 after 3 steps from 5.9 to 7.6 GB.
      _release(step_fn)
      table, pckh, stop = _timed_eval(run, step, predict_step, clock)
    if (step % config.checkpoint_every_steps == 0 or last or stop
        or step == phase.end_step):
      if history:
        _check_finite(history)  # Never save a state that went through a NaN.
        history = []
      checkpoints.save(run.manager, run.state, config, step, pckh)
    if stop:
      logging.warning("Saved step %d after SIGTERM (a preemption notice); exiting.", step)
      break
  return table


def _precise_batch_stats(run: _Run, phase: optim.Phase, step: int) -> TrainState:
  """At the end of `phase` (`step` its last): BatchNorm's running statistics re-estimated on
  `config.precise_bn_batches` training batches through the phase's loss
  (`steps.precise_batch_stats`), before the phase's checkpoint, its evaluation and the next
  phase's hook. The batches are those steps `step`, `step` + 1, ... train on, from a pipeline
  of their own (the loop's is not advanced), and their keys derive from `step`'s: a run
  resumed anywhere gets the same statistics."""
  start = time.time()
  n = run.config.precise_bn_batches
  batches = _train_dataset(run, step).take(n).as_numpy_iterator()
  key = jax.random.fold_in(run.train_key, step)
  pairs = ((parallel.global_batch(_next_batch(run, batches, step + i), run.mesh),
            jax.random.fold_in(key, i + 1)) for i in range(n))
  state = steps.precise_batch_stats(
      run.state, steps.make_batch_moments_step(run.family, run.mesh, phase), pairs)
  logging.info("BatchNorm statistics of phase %r re-estimated on %d batches in %.1f s.",
               phase.name, n, time.time() - start)
  return state


@dataclasses.dataclass
class _Clock:
  """Wall-clock of this run, training and evaluating apart."""

  start: float = dataclasses.field(default_factory=time.time)
  eval_seconds: float = 0.0


def _timed_eval(run: _Run, step: int, predict_step, clock: _Clock):
  """(table or None, pckh or None, preempted?)"""
  jax.block_until_ready(run.state.params)
  host_memory.trim()  # The heap the step freed, given back before the evaluation's programs.
  train_seconds = time.time() - clock.start - clock.eval_seconds
  t0 = time.time()
  table = _evaluate(run, step, predict_step)
  clock.eval_seconds += time.time() - t0
  if table is None:
    return None, None, True
  run.writer.write_scalars(step, {"eval/train_minutes": train_seconds / 60})
  if run.is_chief:
    logging.info("eval at step %d after %.1f min of training: Total %.2f", step,
                 train_seconds / 60, table["Total"])
  return table, table["Total"], False


def _next_batch(run: _Run, train_iter, step):
  """The next local batch; an image that fails to decode is reported by example."""
  try:
    return next(train_iter)
  except tf.errors.OpError as e:
    source, config = run.train_source, run.config
    pipeline.check_decodable(source, pipeline.train_step_indices(
        source, step=step, global_batch_size=config.batch_size, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count()))
    raise RuntimeError(f"Input pipeline failed at step {step}: {e}") from e


def _eta(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"
