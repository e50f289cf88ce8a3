"""The training step and its state, with no input pipeline: importable without TensorFlow.

What a JAX user composes into their own loop (`train.py` is jaxpose's loop around it):
`create_train_state` (replicated over a ("data",) mesh), `train_step` (pure: state, batch,
rng -> state, metrics), `make_train_step` (per phase, that step jitted as two programs,
`TrainStep`: the gradients, then the optimiser's update; or as one; or as a program per kind
of the family's segments, `SegmentedStep`; the state donated),
`compile_ahead` (their compilation on threads, while the state is made, or the programs a
process kept, read back: `step_store`), `make_batch_moments_step` and `precise_batch_stats`
(BatchNorm's statistics re-estimated), `seed_keys`. Only the family touches the model
(`families.Family.loss`).
"""

import collections
import concurrent.futures
import copy
import dataclasses
import functools
import os
import threading
import time
from typing import Any

from absl import logging
from flax import traverse_util
from flax.training import train_state
import jax
import jax.numpy as jnp

from jaxpose import families
from jaxpose import host_memory
from jaxpose import optim
from jaxpose import parallel
from jaxpose import step_store
from jaxpose.data import device_augment
from jaxpose.models import layers


class TrainState(train_state.TrainState):
  """Parameters, optimiser state and the family's opaque model state (BatchNorm statistics)."""

  model_state: Any


class NonFiniteLossError(FloatingPointError):
  pass


create_optimizer = optim.create_optimizer  # The trainer's optimiser (per phase): see optim.py.


def create_train_state(family: families.Family, tx, rng, mesh, *, abstract: bool = False,
                       release_caches: bool = False) -> TrainState:
  """Replicated initial state (or, with `abstract`, its shapes and shardings only), computed
  op by op or as one compiled program, whichever `families.init_mode` expects to be quicker.
  `release_caches`: see `families.run_init` (it empties the process's JAX caches, the
  caller's too; train.py sets it).

  From here on the process gives the compiler's freed heap back to the OS after every
  compilation (`host_memory.trim_after_compiles`: -460 MB of peak RSS for the 2-stack
  hourglass's training process on a CPU)."""
  host_memory.trim_after_compiles()
  init = _state_initialiser(family, tx)
  if abstract:
    return jax.eval_shape(jax.jit(init, out_shardings=parallel.replicated(mesh)), rng)
  return families.run_init(init, rng, out_shardings=parallel.replicated(mesh),
                           release_caches=release_caches)


# (id(family), id(tx)) -> init. By identity: a Family need not be hashable (CPM's layer groups
# hold a dict). Each init closes over its family and optimiser, so their ids stay theirs while
# it is kept.
_INITIALISERS: collections.OrderedDict = collections.OrderedDict()


def _state_initialiser(family: families.Family, tx):
  """init key -> the initial TrainState: one function object per (family, optimiser), so the
  abstract state's trace is reused when the state itself is made (JAX caches traces by
  function and argument types): the trainer traces the initialiser once, not twice (2-stack
  hourglass: the second trace 0.29 s -> 0.003 s). The last 16 pairs are kept."""
  key = (id(family), id(tx))
  if key not in _INITIALISERS:

    def init(rng):
      params, model_state = families.split_variables(family.init(rng))
      return TrainState.create(apply_fn=None, params=params, model_state=model_state, tx=tx)

    _INITIALISERS[key] = init
    while len(_INITIALISERS) > 16:
      _INITIALISERS.popitem(last=False)
  return _INITIALISERS[key]


def seed_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """(init key, train key): independent streams from one seed (step keys fold in the step)."""
  init_key, train_key = jax.random.split(jax.random.key(seed))
  return init_key, train_key


def train_step(state: TrainState, batch, rng, *, family: families.Family, phase: int = 0,
               trainable: tuple[str, ...] | None = None):
  """(state, batch, rng) -> (state, metrics). Pure; compiled once per phase, as one program or
  as `TrainStep`'s two (`gradients_step`, then `update_step`: `make_train_step`).

  `trainable` (the phase's top-level parameter subtrees, None = all): only these are
  differentiated; the others enter the loss as constants and get zero gradients, so a phase
  that trains one part of a model does not pay for the rest's backward pass (Tompson's spatial
  model on a frozen detector). `grad_norm` is over them.
  """
  model_state, grads, metrics = gradients_step(state.params, state.model_state, batch, rng,
                                               family=family, phase=phase, trainable=trainable)
  return update_step(state, grads).replace(model_state=model_state), metrics


def gradients_step(params, model_state, batch, rng, *, family: families.Family, phase: int = 0,
                   trainable: tuple[str, ...] | None = None):
  """(params, model_state, batch, rng) -> (the new model state, the `trainable` subtrees'
  gradients, metrics): the first half of `train_step`.

  The model state comes first because jit gives each donated input buffer to the first output
  of its shape and dtype: after the gradients, the model state's buffers went to gradients of
  the same shapes (the running statistics' to BatchNorm's scales and biases, IEF's frozen
  networks' to its kernels), and XLA copied each leaf before the step could overwrite it (the
  2-stack's program: 390 of its 2,297 calls; docs/performance_log.md, "The model state first
  among the gradients' outputs")."""
  batch = _with_images(family, batch)
  trained = {k: v for k, v in params.items() if trainable is None or k in trainable}
  frozen = {k: v for k, v in params.items() if k not in trained}

  def loss_fn(trained):
    return family.loss({**frozen, **trained}, model_state, batch, rng, phase=phase)

  (loss, (model_state, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trained)
  return model_state, grads, {"loss": loss, "grad_norm": _global_norm(grads), **aux}


def update_step(state: TrainState, grads) -> TrainState:
  """The optimiser's update of `state` (its model state untouched) by `grads`, which may hold
  only some of the top-level parameter subtrees: the others get zero gradients (the optimiser
  sees every parameter, as its state was made). The second half of `train_step`."""
  zeros = jax.tree.map(jnp.zeros_like, {k: v for k, v in state.params.items() if k not in grads})
  return state.apply_gradients(grads={**zeros, **grads})


class TrainStep:
  """A phase's train step, (state, batch, rng) -> (state, metrics) as `train_step`, run as two
  XLA programs: `gradients` ((params, model_state, batch, rng) -> (model state, gradients,
  metrics), the model state donated) and `update` ((the state without its model state,
  gradients) -> that state updated, donated).

  Why two: XLA's CPU runtime reads a program back (from the persistent compilation cache or
  `step_store`) in time that grows faster than its number of calls, and the optimiser's update
  is 1/4 to 1/3 of a step's calls (two fusions per parameter leaf). Apart, the two programs
  compile and are read back on two threads at once: the 8-stack hourglass's warm start
  0.70-0.74x on 2 cores, at the same step time and, with its RMSProp, the same values to the
  bit; other optimisers' updates may round differently than when XLA fused them with the
  gradients (docs/performance_log.md, "The optimiser's update as a program of its own").

  Built by `make_train_step` from jitted functions; `compile_ahead` returns one whose programs
  are compiled (or `host_memory.FirstCall`s around them)."""

  def __init__(self, gradients, update):
    self.gradients, self.update = gradients, update

  @staticmethod
  def gradients_args(state: TrainState, batch, rng) -> tuple:
    """What `gradients` takes of the step's arguments (arrays or their shapes)."""
    return state.params, state.model_state, batch, rng

  @staticmethod
  def update_args(state: TrainState, grads) -> tuple:
    """What `update` takes: the state without its model state (which `gradients` donated and
    replaced), and the gradients."""
    return state.replace(model_state=None), grads

  def __call__(self, state: TrainState, batch, rng):
    model_state, grads, metrics = self.gradients(*self.gradients_args(state, batch, rng))
    state = self.update(*self.update_args(state, grads))
    return state.replace(model_state=model_state), metrics

  @property
  def programs(self) -> tuple:
    return self.gradients, self.update

  def release(self) -> None:
    """Hands back the memory touched for a first call that will not come (`FirstCall`)."""
    _release_first_calls(self.programs)


def _release_first_calls(programs) -> None:
  for program in programs:
    if isinstance(program, host_memory.FirstCall):
      program.release()


class SegmentedStep:
  """A phase's train step, (state, batch, rng) -> (state, metrics) as `train_step`, run as an
  XLA program per kind of the family's segments (`families.Family.segments`; config
  `segmented_step`):

    "prepare"          the batch's images and targets (`Segmentation.prepare`), a key per
                       segment (the step's folded with the segment's index);
    "reserve KIND"     in a step that finds none kept: buffers for a segment's residuals;
    "forward KIND"     per segment in order: its output, loss and new model state, and the
                       `jax.vjp` of its output and loss, whose residuals are the outputs,
                       written over the buffers the step before kept (`_Kept`);
    "backward KIND"    per segment in reverse: that vjp applied, its gradients and its input's
                       cotangent; its residuals' buffers are kept for the next step;
    "metrics"          the loss and the gradients' norm (`train_step`'s metrics);
    "update"           the optimiser's update (`TrainStep.update`).

  Alike segments share their programs: the 8-stack hourglass compiles the 12 a 2-stack does.
  Why: XLA's CPU runtime compiles, and reads back, one program in time that grows faster than
  the program. On 2 cores the 8-stack hourglass's first step was done 22.8 s after its process
  started with the persistent cache warm, against 31.1 s as `TrainStep`'s two programs, and
  38.6 against 48.2 s cold (docs/performance_log.md, "The stacks as programs of their own, in
  the trainer"). Where one program is small, it compiles faster than several (the 2-stack's),
  so configs choose.

  The values are `train_step`'s to float rounding (tests/test_segments.py). Segments
  that draw random numbers draw with their own keys, not the one `Family.loss` gets (the
  hourglass draws none). Shardings: arrays whose leading axis is the global batch's (the batch,
  activations, residuals) are split over the data axis, the rest replicated, so that the
  programs compiled ahead (`compile_ahead`) agree on what each passes the next.

  Built by `make_train_step` from jitted functions; `compile_ahead` returns one whose programs
  are compiled (`with_programs`)."""

  def __init__(self, family: families.Family, mesh, phase: int, trainable, update):
    if family.segments is None:
      raise ValueError(f"config.segmented_step: the {family.name!r} family declares no "
                       "segments (Family.segments); set config.segmented_step = False.")
    self.family, self.segments, self.trainable = family, family.segments.segments, trainable
    self.rep, self.data = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    prepare = functools.partial(_prepare_segments, family, self._place)
    jit = functools.partial(_jit_on, mesh)
    self.jitted, self._forward_work = {"prepare": jit(prepare)}, {}
    reserve = jit(functools.partial(_reserve, self._place), static_argnums=(0, 1))
    for segment in self.segments:
      if f"forward {segment.kind}" not in self.jitted:  # Its kind's first: the kind's apply.
        self.jitted[f"reserve {segment.kind}"] = reserve
        # The forward's work as a jitted function of its own, which the forward program calls:
        # `_reserve_args` traces it for the residuals' shapes, and the program's trace then
        # finds it in JAX's cache rather than tracing the segment again (the 8-stack
        # hourglass's three kinds: 1.15 of its 4.5 s of tracing).
        self._forward_work[segment.kind] = jit(functools.partial(
            _segment_forward_work, segment.apply, phase, self._place))
        self.jitted[f"forward {segment.kind}"] = jit(functools.partial(
            _segment_forward, self._forward_work[segment.kind]), donate_argnums=(1, 5),
            keep_unused=True)  # `reuse`, unread, still in the program, to be written over.
        self.jitted[f"backward {segment.kind}"] = jit(
            functools.partial(_segment_backward, self._place))
    self.jitted["metrics"] = jit(_segment_metrics, out_shardings=self.rep)
    self.jitted["update"] = update
    self.compiled = {}  # Program name -> compiled (`with_programs`).
    self._beside = None  # Where the programs not in `compiled` come from, if not jitted.
    self._kept = _Kept()
    self._trims = parallel.is_cpu_mesh(mesh)

  def _place(self, tree, batch_size: int | None):
    """`tree` constrained to the shardings above (batch_size None: every leaf replicated)."""
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(
        x, self._sharding(x, batch_size)), tree)

  def _sharding(self, x, batch_size: int | None):
    split = batch_size is not None and x.ndim and x.shape[0] == batch_size
    return self.data if split else self.rep

  def _specs(self, tree, batch_size: int | None):
    """`jax.ShapeDtypeStruct`s of `tree`'s leaves, with the shardings `_place` gives them."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=self._sharding(x, batch_size)), tree)

  def _program(self, name: str):
    if name not in self.compiled and self._beside is not None:
      self.compiled[name] = self._beside.program(name)
    return self.compiled.get(name, self.jitted[name])

  def __call__(self, state: TrainState, batch, rng):
    _check_segments(self.family, state.params)
    if self._trims:  # On a CPU, the heap the step before freed goes back to the OS (`_Kept`).
      jax.block_until_ready(state)
      host_memory.trim()
    batch, keys = self._program("prepare")(batch, rng)
    kept = self._kept.for_batch(batch)
    model_state, new_state, losses, saved, carry = state.model_state, {}, [], [], None
    for i, (segment, key) in enumerate(zip(self.segments, keys)):
      args = (_part(state.params, segment), _state_part(model_state, segment), carry, batch, key)
      reuse = kept.pop(i, None) or self._reserve(segment, args)
      carry, loss, new, vjp = self._program(f"forward {segment.kind}")(*args, reuse)
      _put_state(new_state, new, segment)
      losses.append(loss)
      saved.append((vjp, _forward_inputs(*args)))
    grads, cotangent = {}, None
    for i in reversed(range(len(self.segments))):
      segment, (vjp, inputs) = self.segments[i], saved[i]
      got, cotangent = self._program(f"backward {segment.kind}")(vjp, cotangent, inputs)
      saved[i] = None  # Its inputs may go once used; its residuals are kept for the next step.
      kept[i] = tuple(jax.tree.leaves(vjp))
      grads.update({segment.subtrees[0]: got} if segment.nested else got)
    grads = {k: v for k, v in grads.items() if self.trainable is None or k in self.trainable}
    metrics = self._program("metrics")(tuple(losses), grads)
    state = self._program("update")(*TrainStep.update_args(state, grads))
    named = {s.metric: loss for s, loss in zip(self.segments, losses) if s.metric}
    model_state = {c: {**tree, **new_state.get(c, {})} for c, tree in model_state.items()}
    return state.replace(model_state=model_state), {**metrics, **named}

  def _reserve(self, segment, args) -> tuple:
    """Buffers for a segment's residuals where no earlier step left any (zeros, written once):
    "reserve KIND", compiled for the forward's residuals at `args`."""
    name = f"reserve {segment.kind}"
    if name in self.compiled or self._beside is not None:
      return self._program(name)()
    return self.jitted[name](*self._reserve_args(segment, args))

  def _reserve_args(self, segment, args) -> tuple:
    """"reserve KIND"'s static arguments: the global batch size and the residuals' (shape,
    dtype)s, from the forward traced at `args` (parameters, model state, input, batch, key)
    without buffers to reuse."""
    _, _, _, batch, _ = args
    residuals = jax.tree.leaves(self._forward_work[segment.kind].trace(*args).out_info[3])
    return _batch_size(batch), tuple((x.shape, x.dtype.name) for x in residuals)

  def trace(self, state: TrainState, batch, rng, each=None) -> list[tuple[str, Any, tuple, Any]]:
    """[(name, jitted, args, traced)]: each program traced once, in the order a step first
    runs it, from the shapes (shardings included) of its arguments: `state`, `batch` and `rng`
    (arrays or `jax.ShapeDtypeStruct`s; nothing runs). What `compile_ahead` compiles.
    `each`, when given, is called with each (name, jitted, args, traced) as it is traced."""
    _check_segments(self.family, state.params)
    plan, size = [], _batch_size(batch)

    def add(name, *args):
      traced = self.jitted[name].trace(*args)
      plan.append((name, self.jitted[name], args, traced))
      if each is not None:
        each(plan[-1])
      return traced.out_info

    batch, keys = add("prepare", batch, rng)
    batch, keys = self._specs(batch, size), self._specs(keys, None)
    outputs, carry, losses = {}, None, []
    for segment, key in zip(self.segments, keys):
      name = f"forward {segment.kind}"
      if name not in outputs:  # The kind's first segment: trace its programs.
        args = (_part(state.params, segment), _state_part(state.model_state, segment), carry,
                batch, key)
        reuse = add(f"reserve {segment.kind}", *self._reserve_args(segment, args))
        c, loss, _, vjp = add(name, *args, self._specs(reuse, size))
        outputs[name] = self._specs(c, size), self._specs(loss, None)
        add(f"backward {segment.kind}", self._specs(vjp, size), outputs[name][0],
            _forward_inputs(*args))
      carry, loss = outputs[name]
      losses.append(loss)
    grads = {k: v for k, v in self._specs(state.params, None).items()
             if self.trainable is None or k in self.trainable}
    add("metrics", tuple(losses), grads)
    add("update", *TrainStep.update_args(state, grads))
    return plan

  def with_programs(self, compiled: dict, beside: "_TracedBeside | None" = None
                    ) -> "SegmentedStep":
    """This step, calling `compiled` ({name: compiled program}) instead of its jitted ones,
    and those `beside` gives (`_TracedBeside`) for the others."""
    step = copy.copy(self)
    step.compiled, step._kept, step._beside = dict(compiled), _Kept(), beside
    return step

  @property
  def programs(self) -> tuple:
    return tuple(self._program(name) for name in self.jitted)

  def release(self) -> None:
    """As `TrainStep.release`; also lets go of the residuals' buffers kept between steps."""
    self._kept = _Kept()
    _release_first_calls(self.compiled.values())


class _Kept(dict):
  """SegmentedStep's residual buffers kept from one step to the next, by segment index.

  Each forward program's residuals are outputs that live until its backward program. Freed
  each step, hundreds of blocks of 16-33 MB among each program's temporaries, they fragmented
  the heap `train.py` keeps (`jaxpose.huge_pages`): the 8-stack hourglass's peak RSS grew to
  ~7.1 GB over 14 steps, against 5.8 GB as two programs. Kept, and donated to the same
  segment's forward program in the next step (`reuse`: XLA writes each residual over a donated
  buffer of its shape), they are the same blocks every step (docs/performance_log.md: "The
  residuals' buffers, kept between steps"). Valid while the batch's shapes stay the same.

  What else a step frees still fragments the heap, less so: on a CPU each step starts once the
  step before is done (its state ready) by handing the free heap back (`host_memory.trim`).
  With the residuals kept, that is ~1 GB, and the trim cost no measurable time; without them,
  ~5 GB, faulted in again at 4-11% of the step."""

  shapes = None  # The batch's shapes and dtypes the buffers were kept for.

  def for_batch(self, batch) -> "_Kept":
    """These buffers, emptied first if they were kept for a batch of other shapes."""
    shapes = tuple((x.shape, x.dtype) for x in jax.tree.leaves(batch))
    if shapes != self.shapes or any(
        x.is_deleted() for buffers in self.values() for x in buffers):
      self.clear()  # Another batch shape, or a step that failed after donating some.
      self.shapes = shapes
    return self


def _reserve(place, batch_size: int, residuals: tuple) -> tuple:
  """SegmentedStep's "reserve KIND": zeros of `residuals`' (shape, dtype)s, placed as the
  forward program places its residuals."""
  return place(tuple(jnp.zeros(shape, dtype) for shape, dtype in residuals), batch_size)


def _prepare_segments(family, place, batch, rng):
  """SegmentedStep's "prepare": (the batch the segments read, a key per segment)."""
  batch = place(family.segments.prepare(_with_images(family, batch)), _batch_size(batch))
  return batch, tuple(jax.random.fold_in(rng, i) for i in range(len(family.segments.segments)))


def _segment_forward(work, params, model_state, carry, batch, rng, reuse):
  """SegmentedStep's "forward KIND": `work` (the kind's `_segment_forward_work`, jitted) of all
  its arguments but `reuse` (donated, values unused): buffers of the residuals' shapes, which
  XLA writes the residuals over (`_Kept`)."""
  del reuse
  return work(params, model_state, carry, batch, rng)


def _segment_forward_work(apply, phase, place, params, model_state, carry, batch, rng):
  """(output, loss, new model state, vjp of both) of a segment. The vjp's residuals that are
  the program's own inputs (its parameters, input, batch, key) are not returned, which would
  copy them: `_Input`s stand in for them, and the backward program is given the inputs
  again."""
  size = _batch_size(batch)

  def run(params, carry):
    return apply(params, model_state, carry, batch, rng, phase=phase)

  if carry is None:  # The first segment: no input to differentiate.
    (carry_out, loss), vjp, new = jax.vjp(lambda p: run(p, None), params, has_aux=True)
  else:
    (carry_out, loss), vjp, new = jax.vjp(run, params, carry, has_aux=True)
  inputs = _forward_inputs(params, model_state, carry, batch, rng)
  where = {id(x): i for i, x in enumerate(jax.tree.leaves(inputs))}
  vjp = jax.tree.map(lambda x: _Input(where[id(x)]) if id(x) in where else x, vjp)
  return place(carry_out, size), place(loss, None), place(new, None), place(vjp, size)


def _forward_inputs(params, model_state, carry, batch, rng) -> tuple:
  """Of a forward program's arguments, those a residual may be and the backward program is
  given again: all but the model state, which the forward donates."""
  del model_state
  return params, carry, batch, rng


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class _Input:
  """In a segment's vjp between its programs: the forward program's input leaf `index` (of its
  parameters, input, batch and key, flattened), given to the backward program again."""
  index: int


def _segment_backward(place, vjp, cotangent, inputs):
  """SegmentedStep's "backward KIND": (the segment's gradients, its input's cotangent, or None
  for the first segment). `inputs`: the forward program's (parameters, input, batch, key)."""
  leaves = jax.tree.leaves(inputs)
  vjp = jax.tree.map(lambda x: leaves[x.index] if isinstance(x, _Input) else x, vjp,
                     is_leaf=lambda x: isinstance(x, _Input))
  got = vjp((cotangent, jnp.ones((), jnp.float32)))
  carry_cotangent = got[1] if len(got) > 1 else None
  size = None if carry_cotangent is None else _batch_size(carry_cotangent)
  return place(got[0], None), place(carry_cotangent, size)


def _batch_size(tree) -> int:
  """The leading axis of `tree`'s first leaf: the global batch's, for a batch or a carry."""
  return jax.tree.leaves(tree)[0].shape[0]


def _segment_metrics(losses, grads) -> dict:
  return {"loss": sum(losses), "grad_norm": _global_norm(grads)}


def _check_segments(family: families.Family, params) -> None:
  """The segments own every top-level parameter subtree, each once (a clear error if not)."""
  owned = [name for segment in family.segments.segments for name in segment.subtrees]
  missing, twice = set(params) - set(owned), {n for n in owned if owned.count(n) > 1}
  if missing or twice or set(owned) - set(params):
    raise ValueError(f"The {family.name!r} family's segments must own each parameter subtree "
                     f"once: missing {sorted(missing)}, owned twice {sorted(twice)}, unknown "
                     f"{sorted(set(owned) - set(params))}.")


def _part(tree, segment):
  """A segment's part of a root tree (the parameters, or one model-state collection)."""
  if segment.nested:
    return tree[segment.subtrees[0]]
  return {k: tree[k] for k in segment.subtrees}


def _state_part(model_state, segment) -> dict:
  """A segment's part of every model-state collection that holds any of its subtrees."""
  if segment.nested:
    name = segment.subtrees[0]
    return {c: tree[name] for c, tree in model_state.items() if name in tree}
  parts = {c: {k: tree[k] for k in segment.subtrees if k in tree}
           for c, tree in model_state.items()}
  return {c: part for c, part in parts.items() if part}


def _put_state(new_state: dict, part: dict, segment) -> None:
  """Writes a segment's updated collections into the new model state, in place."""
  for c, tree in part.items():
    new_state.setdefault(c, {}).update({segment.subtrees[0]: tree} if segment.nested else tree)


def step_programs(step) -> tuple:
  """A step's programs, jitted or compiled: a `TrainStep`'s two, a `SegmentedStep`'s, else
  the step itself."""
  return step.programs if isinstance(step, (TrainStep, SegmentedStep)) else (step,)


def _global_norm(tree, small: int = 1 << 16) -> jax.Array:
  """The L2 norm of all of `tree`'s (real) leaves together (optax.tree.norm's value): leaves of
  fewer than `small` values (biases, BatchNorm's scales) concatenated and reduced at once,
  larger ones each (a library call each on a CPU), the sums added in one reduction.

  optax.tree.norm reduces every leaf apart and adds the sums one by one: in the 2-stack
  hourglass's step that made ~1,000 of the 4,001 calls of its compiled program's runtime, each
  of which XLA compiles, and rebuilds whenever it reads the program back (from the persistent
  cache or `step_store`). Here: 3,027 calls, the same step time, the program read back in
  1.85 s instead of 2.2-2.3 (the 8-stack's in 15.9 instead of 32.2 s). All leaves in one
  concatenation copied 27 MB a step (20 ms); docs/performance_log.md."""
  leaves = [x.astype(jnp.float32) for x in jax.tree.leaves(tree)]
  sums = [jnp.sum(x * x) for x in leaves if x.size >= small]
  few = [jnp.ravel(x) for x in leaves if x.size < small]
  if few:
    flat = jnp.concatenate(few)
    sums.append(jnp.sum(flat * flat))
  return jnp.sqrt(jnp.sum(jnp.stack(sums))) if sums else jnp.zeros((), jnp.float32)


def _with_images(family: families.Family, batch):
  """The batch with its input images: config.augment_on_device sends uint8 crops (or pre-crops)
  that are resampled and coloured here, on the device."""
  if "image" in batch:
    return batch
  return dict(batch, image=device_augment.input_images(batch, family.input_size))


def make_train_step(family, mesh, phase: int | optim.Phase = 0,
                    update_apart: bool = True, segmented: bool = False):
  """The step of one phase (an `optim.Phase`, or an index: then everything trains), the state
  donated: as two jitted programs (`TrainStep`), or with `update_apart=False` (config key
  `update_apart`) one jit of `train_step`; with `segmented` (config key `segmented_step`) as a
  program per kind of the family's segments (`SegmentedStep`; `update_apart` then has no
  say)."""
  index, trainable = (phase.index, phase.trainable) if isinstance(phase, optim.Phase) else (
      phase, None)
  rep, data = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  static = dict(family=family, phase=index, trainable=trainable)
  update = jax.jit(update_step, in_shardings=(rep, rep), out_shardings=rep, donate_argnums=0)
  if segmented:
    return SegmentedStep(family, mesh, index, trainable, update)
  if not update_apart:
    return _jit_on(mesh, functools.partial(train_step, **static), in_shardings=(rep, data, rep),
                   out_shardings=(rep, rep), donate_argnums=0)
  return TrainStep(
      _jit_on(mesh, functools.partial(gradients_step, **static),
              in_shardings=(rep, rep, data, rep), out_shardings=(rep, rep, rep),
              donate_argnums=1), update)


def _jit_on(mesh, fn, **kwargs):
  """jax.jit of `fn` traced on `mesh` (`parallel.tracing_on`): the step's layers may then split
  their work over its data axis by hand (`layers.PER_DEVICE`)."""
  return jax.jit(parallel.tracing_on(mesh, fn), **kwargs)


def make_batch_moments_step(family, mesh, phase: int | optim.Phase = 0):
  """jit: (state, batch, rng) -> the statistics every BatchNorm layer computes on `batch` in
  the family's training loss of `phase`, averaged over the layer's calls there, as the
  "batch_stats" collection's tree ({..., layer: {"mean", "var"}}; layers the loss does not run
  in training are absent). The state is read, not changed or donated."""
  index = phase.index if isinstance(phase, optim.Phase) else phase
  rep, data = parallel.replicated(mesh), parallel.batch_sharded(mesh)

  def moments(state, batch, rng):
    batch = _with_images(family, batch)
    model_state = {**state.model_state, layers.BATCH_MOMENTS: {}}
    _, (new_state, _) = family.loss(state.params, model_state, batch, rng, phase=index)
    return jax.tree.map(lambda calls: sum(calls) / len(calls),
                        new_state.get(layers.BATCH_MOMENTS, {}),
                        is_leaf=lambda x: isinstance(x, tuple))

  return jax.jit(moments, in_shardings=(rep, data, rep), out_shardings=rep)


def precise_batch_stats(state: TrainState, moments_step, batches) -> TrainState:
  """PreciseBN (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021): the running statistics
  of the BatchNorm layers replaced by the mean of their statistics over `batches` ((batch, rng)
  pairs, through `make_batch_moments_step`), instead of the exponential average that training
  left, which weighs the last few batches most (momentum 0.9: ~10 batches of a few images).
  Layers the loss does not run in training keep theirs. No-op without BatchNorm."""
  if "batch_stats" not in state.model_state:
    return state
  total, count = None, 0
  for batch, rng in batches:
    moments = moments_step(state, batch, rng)
    total = moments if total is None else jax.tree.map(jnp.add, total, moments)
    count += 1
  if not total:  # No batches, or no BatchNorm run in training by this loss.
    return state
  mean = jax.tree.map(lambda t: t / count, total)
  flat = traverse_util.flatten_dict(state.model_state["batch_stats"])
  stats = traverse_util.unflatten_dict({**flat, **traverse_util.flatten_dict(mean)})
  return state.replace(model_state={**state.model_state, "batch_stats": stats})


def compile_ahead(step_fn, *args, laps: dict | None = None, prefault: bool = False,
                  keep: str | None = None) -> concurrent.futures.Future:
  """Traces and lowers the jitted `step_fn` for `args` (arrays, or the `jax.ShapeDtypeStruct`s,
  shardings included, of what it will be called with: e.g. `create_train_state(...,
  abstract=True)` and `parallel.global_batch_spec`), then compiles it on a thread of its own.
  Returns a future of the compiled step (`jax.stages.Compiled`), called as `step_fn` is. A
  `TrainStep`'s two programs are each traced and lowered here, then compiled on two threads
  (the update's laps under laps["update"]); the future's result is a `TrainStep` of them. A
  `SegmentedStep`'s programs likewise, on a thread per core (`_segments_ahead`; each program's
  laps under laps[its name]; never prefaulted); the result, that step calling them; where some
  of them were kept (`keep`, below), the step at once, tracing them beside its first call.

  XLA does not hold Python's lock while it compiles, so what the caller does meanwhile (the
  initialiser, restoring a checkpoint, the input pipeline's first batches) overlaps the
  compilation. Tracing and lowering are Python, so they run here first: on the thread, beside
  an initialiser that runs Python too, both took ~2x as long (8-stack hourglass: tracing 12.5 s
  instead of ~6). Measured (cold persistent cache, one process each, 2026-12-03), the step
  compiled and the state initialised after the process started, one after the other against
  this: 2-stack hourglass 20.8-23.9 s against 17.8-20.7 s (three pairs), 8-stack 74.7 s against
  68.8 s (one pair); with a warm cache (the cached program read instead), 8.2-8.5 s against
  7.8-10.3 s. `laps`, when given, receives the seconds of "trace", "lower" and "compile".

  `keep`, a label of the program known before tracing it (`train.py`: the config and the
  phase): the step compiled here is kept after its first call (`step_store.StepStore`, beside
  the persistent compilation cache), and a later process with the same label and arguments
  starts reading it before tracing, beside the trace; it is used if the lowered program is the
  one kept ("compile" then times the wait for the read, "stored_read" the read itself).

  `prefault` (a process's first step, on a CPU): as many bytes as this program's temporaries
  took when it last ran on this machine are touched meanwhile, on a thread of their own,
  while the process's RSS stays under that run's peak, and handed back to the kernel just
  before the compiled step's first call, whose temporaries then find pages the host has backed
  (`host_memory.Prefault`). Where the program is not known yet, its sizes are recorded after
  its first call (`host_memory.TemporariesRecord`, beside the persistent compilation cache)
  for the next process. The compiled step then comes as a `host_memory.FirstCall`. Not for a
  later phase's step: its pages would stand beside the training phase's. `laps` also gets the
  MB touched ("prefault_mb") once the first call has released them."""
  laps = {} if laps is None else laps
  if isinstance(step_fn, SegmentedStep):
    return _segments_ahead(step_fn, args, laps, keep)
  if not isinstance(step_fn, TrainStep):
    return _program_ahead(step_fn, args, laps, prefault, _start_reads(keep, args)[None])[0]
  kept = _start_reads(keep, args, ("gradients", "update"))
  gradients, out_info = _program_ahead(step_fn.gradients, TrainStep.gradients_args(*args), laps,
                                       prefault, kept["gradients"])
  laps["update"] = {}  # The update's own laps; never prefaulted (its temporaries: ~0).
  _, grads_info, _ = out_info  # (model state, gradients, metrics): `gradients_step`'s.
  update, _ = _program_ahead(step_fn.update, TrainStep.update_args(args[0], grads_info),
                             laps["update"], False, kept["update"])
  return host_memory.on_thread("compile_ahead",
                               lambda: TrainStep(gradients.result(), update.result()))


def _segments_ahead(step: SegmentedStep, args, laps: dict, keep: str | None):
  """`compile_ahead` for a `SegmentedStep`: its programs traced and lowered here in the order a
  step runs them (`SegmentedStep.trace`), then compiled on as many threads as the process has
  cores, each kept as "KEEP\nNAME" (`keep`) for the step's `args` and its laps in laps[NAME].
  Never prefaulted: the programs run one after another, each with temporaries of its own.

  Where this process finds any of them kept (a warm start), nothing is traced here: the step
  comes at once, and its first call traces its programs on a thread, each run as soon as it is
  read back (`_TracedBeside`)."""
  kept = _start_reads(keep, args, tuple(step.jitted))
  if any(reading is not None for _, _, reading in kept.values()):
    done = concurrent.futures.Future()
    done.set_result(step.with_programs({}, _TracedBeside(
        tuple(step.jitted), functools.partial(step.trace, *args), laps, kept)))
    return done
  plan = _timed(laps, "trace", step.trace, *args)
  pool = _compile_pool()
  try:
    futures = {entry[0]: _segment_program_ahead(pool, laps, kept, entry) for entry in plan}
  finally:
    pool.shutdown(wait=False)
  return host_memory.on_thread("compile_ahead", lambda: step.with_programs(
      {name: future.result() for name, future in futures.items()}))


def _segment_program_ahead(pool, laps: dict, kept: dict, entry) -> concurrent.futures.Future:
  """A future of one program of `SegmentedStep.trace`'s plan (`entry`: name, jitted, args,
  traced), lowered here, then read back or compiled by `pool` (`_program_ahead`); its laps in
  laps[name]."""
  name, jitted, program_args, traced = entry
  return _program_ahead(jitted, program_args, laps.setdefault(name, {}), False, kept[name],
                        traced=traced, submit=pool.submit)[0]


def _compile_pool() -> concurrent.futures.ThreadPoolExecutor:
  """Threads to compile a step's programs on: as many as the process has cores (at least 2)."""
  threads = max(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)
  return concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="compile_ahead")


class _TracedBeside:
  """Programs of a step traced and lowered on a thread that the step's first call starts
  (`start`), in the order that call runs them, then each read back (or compiled, where what was
  kept is another program: `_program_ahead`). The call runs each program as soon as it is in
  hand (`program`), so the trace, Python on one core, goes on beside the programs before it,
  which XLA runs on its own threads: a `SegmentedStep`'s programs, where some were kept.
  Traced before the state is made instead (as `compile_ahead` traces what no process kept), it
  is Python the first step waits for: the 8-stack hourglass's 5.6-7.2 s of its 27-31 s warm
  start on 2 cores of an Intel Xeon. Not from `compile_ahead` itself: beside the initialiser,
  Python too, both would take longer. Measured, with what was not kept (a `TrainStep`'s
  update): docs/performance_log.md, "Traced beside the first step". Traced on another thread,
  the programs do not see the caller's thread-local JAX settings (a `with
  jax.default_device(...)` block); jaxpose's steps place everything by their mesh.

  `trace(each)` traces the programs, calling `each((name, jitted, args, traced))` for each in
  turn; `names`, theirs; laps[NAME] gets each one's laps and laps["trace_beside"] the trace's
  seconds (the lowering included); `kept`: `_start_reads`'s."""

  def __init__(self, names: tuple, trace, laps: dict, kept: dict):
    self._work = functools.partial(self._trace, trace, laps, kept)
    self._futures = {name: concurrent.futures.Future() for name in names}
    self._lock = threading.Lock()
    self._started = False

  def start(self) -> None:
    """Starts the trace (idempotent)."""
    with self._lock:
      if not self._started:
        self._started = True
        host_memory.on_thread("compile_ahead", self._work)

  def program(self, name: str):
    """The program `name`, compiled, once in hand (starting the trace if need be)."""
    self.start()
    return self._futures[name].result()

  def _trace(self, trace, laps: dict, kept: dict) -> None:
    pool, handed = _compile_pool(), set()

    def each(entry):
      future = _segment_program_ahead(pool, laps, kept, entry)
      handed.add(entry[0])
      future.add_done_callback(functools.partial(_pass_on, self._futures[entry[0]]))

    try:
      _timed(laps, "trace_beside", trace, each)
    except BaseException as e:  # pylint: disable=broad-except  # The step's call raises it.
      for name, future in self._futures.items():
        if name not in handed:
          future.set_exception(e)
    finally:
      pool.shutdown(wait=False)


def _pass_on(target: concurrent.futures.Future, source: concurrent.futures.Future) -> None:
  """`source`'s result, or its exception, set on `target`."""
  if source.exception() is not None:
    target.set_exception(source.exception())
  else:
    target.set_result(source.result())


def _start_reads(keep: str | None, args, parts: tuple = (None,)) -> dict:
  """{part: (the store, the name the program is kept under, its `step_store.Reading` or None)}
  for the program labelled `keep` (part None) or each of a step's `parts`, kept as
  "KEEP\nPART", all named by the step's `args` (known before its programs are traced) and read
  beside the trace, in `parts`' order, on one thread: on a thread each, they took the main
  thread's core too (8-stack hourglass, warm: tracing and lowering 5.0-5.4 s against ~3.8
  alone; docs/performance_log.md). (None, None, None) each where nothing is kept (`keep` None,
  or no store: `step_store.StepStore.beside_cache`)."""
  store = step_store.StepStore.beside_cache() if keep is not None else None
  if store is None:
    return dict.fromkeys(parts, (None, None, None))
  reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="step_store")
  try:
    labels = [keep if part is None else f"{keep}\n{part}" for part in parts]
    return {part: (store, stored_as, store.read(stored_as, reader.submit))
            for part, stored_as in zip(parts, step_store.names(labels, args))}
  finally:
    reader.shutdown(wait=False)


def _program_ahead(step_fn, args, laps: dict, prefault: bool, kept: tuple, traced=None,
                   submit=None):
  """(a future of the compiled program, its outputs' shapes): `compile_ahead` for one jitted
  function, traced here unless `traced` is given (its trace), compiled on a thread of its own
  or by `submit` (e.g. a pool's); `kept`: its kept copy's (store, name, reading), as
  `_start_reads` gives them."""
  store, stored_as, reading = kept
  record = host_memory.TemporariesRecord.beside_cache() if prefault else None
  early = None
  try:
    if traced is None:
      traced = _timed(laps, "trace", step_fn.trace, *args)
    # The kept program's memory, touched from now on; from before the trace, the touch delayed
    # the read, the longer path (warm start 0.95x for the 2-stack; docs/performance_log.md).
    early = _prefault(record, reading.program) if reading is not None else None
    lowered = _timed(laps, "lower", traced.lower)
  except BaseException:
    if early is not None:
      early.release()
    raise

  def compile_():
    key = None if record is None and store is None else host_memory.program_key(lowered)
    touch = early
    if early is not None and reading.program != key:  # Another program than the one kept.
      early.release()
      touch = None
    if touch is None:
      touch = _prefault(record, key)
    start = time.perf_counter()
    try:
      compiled, fresh = _read_or_compile(lowered, key, reading, laps)
    except BaseException:
      if touch is not None:
        touch.release()
      raise
    laps["compile"] = round(time.perf_counter() - start, 3)
    after = []  # Once the first step is on its way (the memory analysis: 0.3 s, 2-stack).
    if record is not None and touch is None:
      after.append(lambda peak_rss: record.remember(key, compiled, peak_rss))
    if store is not None and fresh and laps["compile"] >= store.min_compile_s():
      after.append(lambda peak_rss: store.put(stored_as, key, compiled))
    if touch is None and not after:
      return compiled
    return host_memory.FirstCall(
        compiled, prefault=touch, laps=laps,
        after=(lambda peak_rss: [f(peak_rss) for f in after]) if after else None)

  future = (submit or functools.partial(host_memory.on_thread, "compile_ahead"))(compile_)
  return future, traced.out_info


def _timed(laps: dict, name: str, fn, *args):
  """fn(*args), its seconds in laps[name]."""
  clock = time.perf_counter()
  out = fn(*args)
  laps[name] = round(time.perf_counter() - clock, 3)
  return out


def step_label(config, phase: optim.Phase) -> str:
  """A phase's train step's name before it is traced (`compile_ahead`'s `keep`): the phase
  and the whole config (a change of any key misses the kept step)."""
  return f"train_step {phase.index} {phase.name}\n{config.to_json_best_effort(sort_keys=True)}"


def _prefault(record, key: str | None):
  """A `host_memory.Prefault` of what `key`'s program took when it last ran here, or None."""
  known = None if record is None or key is None else record.get(key)
  return host_memory.Prefault(*known) if known else None


def _read_or_compile(lowered, key: str | None, reading, laps: dict) -> tuple[Any, bool]:
  """(the compiled step, whether XLA compiled it in this process): the one `reading` (a
  `step_store.Reading`, or None) read if it was compiled from this lowered program (`key`),
  else `lowered.compile()`."""
  if reading is not None and reading.program == key:
    try:
      compiled = reading.compiled(lowered)
    except Exception as e:  # pylint: disable=broad-except  # E.g. another JAX's internals.
      logging.warning("The kept step %s could not be used (%s: %s); compiling it.",
                      reading.path, type(e).__name__, e)
      compiled = None
    if compiled is not None:
      laps["stored_read"] = round(reading.seconds, 3)
      return compiled, False
  return step_store.compile_fresh(lowered)
