"""Training: state, the jitted step, checkpoints and the loop.

Designed for many hosts and exact resumption from the start:
  * batches are a pure function of (seed, step, process) (see data/pipeline.py) and the step's
    RNG is fold_in(seed, step), so a restart from a checkpoint at step s continues bit for bit;
  * the step is one jit over a ("data",) mesh: parameters replicated, batches sharded;
  * orbax saves every process's shards; only process 0 writes logs and summaries;
  * a non-finite loss stops the run before anything is saved; SIGTERM saves and exits.
"""

import dataclasses
import functools
import signal
import time
from typing import Any

from absl import logging
from clu import metric_writers
from clu import periodic_actions
from etils import epath
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorflow as tf

from jaxpose import checkpoints
from jaxpose import evaluate
from jaxpose import families
from jaxpose import parallel
from jaxpose.data import datasets
from jaxpose.data import device_augment
from jaxpose.data import pipeline


class TrainState(train_state.TrainState):
  batch_stats: Any


class NonFiniteLossError(FloatingPointError):
  pass


# ---------------------------------------------------------------------------------------------
# Set-up.


def steps_per_epoch(config, num_train_examples: int) -> int:
  return max(1, num_train_examples // config.batch_size)


def total_steps(config, num_train_examples: int) -> int:
  if config.num_train_steps > 0:
    return config.num_train_steps
  return int(config.num_epochs * steps_per_epoch(config, num_train_examples))


def create_optimizer(config, num_train_examples: int) -> optax.GradientTransformation:
  """The config's optimiser with its step-wise learning-rate schedule."""
  opt = config.optimizer
  if opt.schedule == "piecewise":  # x decay_factor at each of decay_epochs.
    epoch = steps_per_epoch(config, num_train_examples)
    boundaries = {int(e * epoch): opt.decay_factor for e in opt.decay_epochs}
    schedule = optax.piecewise_constant_schedule(opt.learning_rate, boundaries)
  elif opt.schedule == "cosine":  # Cosine decay to 0 at the last step.
    decay = max(1, total_steps(config, num_train_examples) - opt.warmup_steps)
    schedule = optax.cosine_decay_schedule(opt.learning_rate, decay)
  else:
    raise ValueError(f"Unknown config.optimizer.schedule {opt.schedule!r}; known: "
                     "'piecewise', 'cosine'.")
  if opt.warmup_steps:
    warm = optax.linear_schedule(0.0, opt.learning_rate, opt.warmup_steps)
    schedule = optax.join_schedules([warm, schedule], [opt.warmup_steps])
  if opt.name == "rmsprop":
    # PyTorch's RMSprop (the reference's): alpha 0.99, eps 1e-8 outside the square root.
    return optax.rmsprop(schedule, decay=0.99, eps=1e-8, eps_in_sqrt=False)
  if opt.name == "adam":
    return optax.adam(schedule)
  raise ValueError(f"Unknown config.optimizer.name {opt.name!r}; known: 'rmsprop', 'adam'.")


def init_variables(model, rng, init_size: int = 64):
  """Parameters do not depend on the spatial size of this fully convolutional model, so
  initialise at a small size (an 8-stack model at 256 px takes ~40 s to jit-init on CPU)."""
  dummy = jnp.zeros((1, init_size, init_size, 3), jnp.float32)
  return jax.jit(functools.partial(model.init, train=False))(rng, dummy)


def create_train_state(family: families.Family, tx, rng, mesh, *,
                       abstract: bool = False) -> TrainState:
  """Replicated initial state (or, with `abstract`, its shapes and shardings only)."""
  init_size = 4 * 2 ** getattr(family.model, "depth", 2)

  def init():
    variables = init_variables(family.model, rng, init_size)
    return TrainState.create(apply_fn=family.model.apply, params=variables["params"],
                             batch_stats=variables.get("batch_stats", {}), tx=tx)

  init = jax.jit(init, out_shardings=parallel.replicated(mesh))
  return jax.eval_shape(init) if abstract else init()


# ---------------------------------------------------------------------------------------------
# The step.


def train_step(state: TrainState, batch, rng, *, family: families.Family):
  """(state, batch, rng) -> (state, metrics). Pure; compiled once."""
  del rng  # Hourglass has no dropout; the per-step key is fold_in(seed, step) for families that do.

  if "image" in batch:
    images = batch["image"]
  else:  # config.augment_on_device: resample and colour here.
    images = device_augment.input_images(batch, family.input_size)

  def loss_fn(params):
    outputs, new_vars = state.apply_fn({"params": params, "batch_stats": state.batch_stats},
                                       images, train=True, mutable=["batch_stats"])
    loss, aux = family.loss_fn(outputs, batch)
    return loss, (new_vars["batch_stats"], aux)

  (loss, (batch_stats, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
  return new_state, metrics


def make_train_step(family, mesh):
  rep, data = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  step = functools.partial(train_step, family=family)
  return jax.jit(step, in_shardings=(rep, data, rep), out_shardings=(rep, rep),
                 donate_argnums=0)


# ---------------------------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class _Preemption:
  """SIGTERM -> save at the next step boundary and exit cleanly."""

  requested: bool = False

  def install(self):
    try:
      signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread (e.g. inside a test runner's worker).
      pass

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint at the next step boundary.")
    self.requested = True


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


def precrop_source(source: pipeline.Source, input_size: int,
                   augment: pipeline.Augment) -> pipeline.Source:
  """`pipeline.precrop` with a log line: what it cost and what it saves per image."""
  start = time.perf_counter()
  cropped = pipeline.precrop(source, input_size=input_size, augment=augment)

  def megabytes(s):
    return float(tf.reduce_sum(tf.strings.length(s.images))) / 2**20

  logging.info("Pre-cropped %d training images in %.1f s: %.1f MB -> %.1f MB of JPEG.",
               source.num_examples, time.perf_counter() - start, megabytes(source),
               megabytes(cropped))
  return cropped


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming from its latest checkpoint). Returns the last
  evaluation's table."""
  workdir = epath.Path(workdir).absolute()
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  is_chief = jax.process_index() == 0
  # Only process 0 logs and writes summaries; the others write nothing.
  writer = (metric_writers.create_default_writer(str(workdir)) if is_chief
            else metric_writers.MultiWriter([]))
  family = families.create_family(config)
  # Refuse a workdir of another model before any expensive set-up.
  manager = checkpoints.manager(workdir / "checkpoints", config)
  if manager.latest_step() is not None:
    meta = checkpoints.read_meta(manager, manager.latest_step())
    checkpoints.check_compatible(meta, config, str(workdir))

  train_source = datasets.load_source(config.dataset, config.dataset.train_split)
  eval_source = datasets.load_source(config.dataset, config.dataset.eval_split)
  num_steps = total_steps(config, train_source.num_examples)
  tx = create_optimizer(config, train_source.num_examples)
  rng = jax.random.key(config.seed)
  state = create_train_state(family, tx, jax.random.fold_in(rng, 0), mesh)

  start_step = 0
  if manager.latest_step() is not None:
    start_step = manager.latest_step()
    state = checkpoints.restore_state(manager, start_step, state)
    logging.info("Resumed from %s at step %d.", workdir / "checkpoints", start_step)
  elif is_chief:
    writer.write_hparams({k: v for k, v in config.to_dict().items()
                          if isinstance(v, (int, float, str, bool))})

  augment = pipeline.Augment(**config.augment)
  if config.dataset.precrop:
    train_source = precrop_source(train_source, family.input_size, augment)
  train_iter = pipeline.train_dataset(
      train_source, input_size=family.input_size, target_fn=family.target_fn,
      augment=augment, global_batch_size=config.batch_size,
      seed=config.seed, start_step=start_step, process_index=jax.process_index(),
      process_count=jax.process_count(),
      on_device=config.augment_on_device).as_numpy_iterator()
  step_fn = make_train_step(family, mesh)
  predict_step = evaluate.make_predict_step(family, mesh, config.flip_test)
  local_eval_batch = config.eval_batch_size // jax.process_count()

  def run_eval(step):
    table, _ = evaluate.evaluate({"params": state.params, "batch_stats": state.batch_stats},
                                 family, eval_source, mesh, local_batch_size=local_eval_batch,
                                 flip_test=config.flip_test, predict_step=predict_step)
    writer.write_scalars(step, {f"eval/pckh_{k}": v for k, v in table.items()})
    return table

  report = (periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                            every_steps=config.log_every_steps)
            if is_chief else lambda step: None)
  preemption = _Preemption()
  preemption.install()
  history, table, last_log = [], None, (start_step, time.time())
  train_seconds, eval_seconds = 0.0, 0.0  # Wall-clock spent training vs evaluating (this run).
  run_start = time.time()
  logging.info("Training %s for %d steps (%d per epoch) on %d devices, batch %d.",
               family.name, num_steps, steps_per_epoch(config, train_source.num_examples),
               mesh.devices.size, config.batch_size)
  step = start_step
  while step < num_steps:
    batch = parallel.global_batch(_next_batch(train_iter, train_source, config, step), mesh)
    step_rng = jax.random.fold_in(rng, step)
    state, metrics = step_fn(state, batch, step_rng)
    step += 1
    history.append((step, metrics))
    report(step)
    last_step = step == num_steps
    if step % config.log_every_steps == 0 or last_step or preemption.requested:
      means = _check_finite(history)
      history = []
      now = time.time()
      rate = (step - last_log[0]) / max(now - last_log[1], 1e-9)
      last_log = (step, now)
      writer.write_scalars(step, {f"train/{k}": v for k, v in means.items()}
                           | {"train/images_per_sec": rate * config.batch_size})
      if is_chief:
        logging.info("step %d/%d  loss %.5f  %.2f steps/s  %.1f images/s  ETA %s", step,
                     num_steps, means["loss"], rate, rate * config.batch_size,
                     _eta((num_steps - step) / max(rate, 1e-9)))
    pckh = None
    if step % config.eval_every_steps == 0 or last_step:
      jax.block_until_ready(state.params)
      train_seconds = time.time() - run_start - eval_seconds
      t0 = time.time()
      table = run_eval(step)
      eval_seconds += time.time() - t0
      writer.write_scalars(step, {"eval/train_minutes": train_seconds / 60})
      if is_chief:
        logging.info("eval at step %d after %.1f min of training: Total %.2f", step,
                     train_seconds / 60, table["Total"])
      pckh = table["Total"]
    if step % config.checkpoint_every_steps == 0 or last_step or preemption.requested:
      if history:
        _check_finite(history)  # Never save a state that went through a NaN.
        history = []
      checkpoints.save(manager, state, config, step, pckh)
    if preemption.requested:
      logging.warning("Saved step %d after SIGTERM; exiting.", step)
      break
  manager.wait_until_finished()
  writer.flush()
  return table or {}


def _next_batch(train_iter, source, config, step):
  """The next local batch; an image that fails to decode is reported by example."""
  try:
    return next(train_iter)
  except tf.errors.OpError as e:
    pipeline.check_decodable(source, pipeline.train_step_indices(
        source, step=step, global_batch_size=config.batch_size, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count()))
    raise RuntimeError(f"Input pipeline failed at step {step}: {e}") from e


def _eta(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"
