"""Optimisers, learning-rate schedules and training phases (no model, no data).

A config may declare `phases`: `((name, num_steps, trainable), ...)`, run in order by the one
training loop (a DeepPose cascade's stages, IEF's fixed-path steps, Tompson's detector /
spatial model / joint training). `trainable` is a comma-separated list of top-level parameter
subtrees (e.g. "stage2" or "detector,spatial"), or "*" for all; the others get zero updates
(`optax.multi_transform`). Each phase gets a fresh optimiser state and its own schedule over its
steps. Without `phases`, one phase trains everything for `total_steps`.
"""

import collections
import dataclasses

import jax
import ml_collections
import optax


@dataclasses.dataclass(frozen=True)
class Phase:
  index: int
  name: str
  first_step: int  # Global step at which the phase starts.
  num_steps: int
  trainable: tuple[str, ...] | None  # Top-level parameter subtrees; None = all.

  @property
  def end_step(self) -> int:
    return self.first_step + self.num_steps


def steps_per_epoch(config, num_train_examples: int) -> int:
  return max(1, num_train_examples // config.batch_size)


def total_steps(config, num_train_examples: int) -> int:
  if config.get("phases"):
    return sum(p.num_steps for p in phases(config, num_train_examples))
  if config.num_train_steps > 0:
    return config.num_train_steps
  return int(config.num_epochs * steps_per_epoch(config, num_train_examples))


def phases(config, num_train_examples: int) -> list[Phase]:
  """The config's training phases with their global step ranges."""
  declared = config.get("phases") or ()
  if not declared:
    steps = (config.num_train_steps if config.num_train_steps > 0 else
             int(config.num_epochs * steps_per_epoch(config, num_train_examples)))
    return [Phase(0, "train", 0, steps, None)]
  out, first = [], 0
  for i, spec in enumerate(declared):
    try:
      name, num_steps, trainable = spec
      num_steps = int(num_steps)
    except (TypeError, ValueError):
      raise ValueError(f"config.phases[{i}]={spec!r}: expected (name, num_steps, trainable), "
                       "e.g. ('stage2', 1000, 'stage2').") from None
    if num_steps <= 0:
      raise ValueError(f"config.phases[{i}] ({name!r}) has num_steps={num_steps}; must be > 0.")
    subtrees = None if trainable in ("*", "") else tuple(
        s.strip() for s in str(trainable).split(",") if s.strip())
    out.append(Phase(i, str(name), first, num_steps, subtrees))
    first += num_steps
  return out


def phase_at(all_phases: list[Phase], step: int) -> Phase:
  """The phase that runs step `step` (the last phase once training is over)."""
  for p in all_phases:
    if step < p.end_step:
      return p
  return all_phases[-1]


def schedule(config, num_steps: int, steps_per_epoch_: int) -> optax.Schedule:
  """The config's learning-rate schedule over `num_steps` steps, warm-up included.

  Piecewise boundaries are counted from the first step (the warm-up's steps included), so
  `decay_epochs` means what it says with or without warm-up.
  """
  opt = config.optimizer
  warmup = opt.warmup_steps
  if opt.schedule == "piecewise":  # x decay_factor at each of decay_epochs.
    # join_schedules hands the second schedule (step - warmup): shift the boundaries back.
    boundaries = {max(1, int(e * steps_per_epoch_) - warmup): opt.decay_factor
                  for e in opt.decay_epochs}
    after = optax.piecewise_constant_schedule(opt.learning_rate, boundaries)
  elif opt.schedule == "step":  # x decay_factor every decay_steps (Caffe's "step" policy).
    after = optax.exponential_decay(opt.learning_rate, transition_steps=opt.decay_steps,
                                    decay_rate=opt.decay_factor, staircase=True)
  elif opt.schedule == "cosine":  # Cosine decay to 0 at the last step.
    after = optax.cosine_decay_schedule(opt.learning_rate, max(1, num_steps - warmup))
  elif opt.schedule == "constant":
    after = optax.constant_schedule(opt.learning_rate)
  else:
    raise ValueError(f"Unknown config.optimizer.schedule {opt.schedule!r}; known: "
                     "'piecewise', 'step', 'cosine', 'constant'.")
  if not warmup:
    return after
  warm = optax.linear_schedule(0.0, opt.learning_rate, warmup)
  return optax.join_schedules([warm, after], [warmup])


def base_optimizer(config, lr: optax.Schedule,
                   decay_mult: float = 1.0) -> optax.GradientTransformation:
  """The config's update rule with learning rate `lr` (and weight decay x `decay_mult`).
  RMSProp and SGD update alike subtrees by one trace (`by_subtree`: the same values); Adam as
  optax does, since its values would move by rounding that way (its configs, the quickstarts,
  DeepPose's and Tompson's, have at most 182 parameter leaves to trace)."""
  opt = config.optimizer
  if opt.name == "rmsprop":
    # PyTorch's RMSprop (the reference's): alpha 0.99, eps 1e-8 outside the square root.
    return by_subtree(optax.rmsprop(lr, decay=0.99, eps=1e-8, eps_in_sqrt=False))
  if opt.name == "adam":
    return optax.adam(lr)
  if opt.name == "sgd":  # Caffe's SGD: L2 weight decay added to the gradient, then momentum.
    return by_subtree(optax.chain(
        optax.add_decayed_weights(opt.get("weight_decay", 0.0) * decay_mult),
        optax.sgd(lr, momentum=opt.get("momentum", 0.9))))
  raise ValueError(f"Unknown config.optimizer.name {opt.name!r}; known: 'rmsprop', 'adam', "
                   "'sgd'.")


def by_subtree(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """`tx` updating each top-level subtree of a parameter dict that has alike ones (the same
  structure, shapes and dtypes: the hourglass's stacks, CPM's stages) by one jitted function,
  so that they are traced and lowered once and the program calls that function again; the
  other subtrees together, as `tx` does. Only for rules that update each parameter from its
  own gradient, state and value and the state's shared leaves (a step count), which every
  call advances alike (the first call's are kept). The state is `tx`'s (the same
  checkpoints).

  Why: jit traces and lowers a parameter's few operations one by one, ~1 ms a leaf on a CPU.
  The 8-stack hourglass's update (1,464 leaves, 7 stacks alike) took 1.2 s to trace and
  0.7 s to lower on the main thread of every start, now 0.6 and 0.5 s; XLA inlines the calls
  and compiles the same program. Its values are `tx`'s to the bit for RMSProp and SGD (the
  release configs'; tests/test_optim.py); not for Adam, where a few elements of the CPM
  quickstart's alike stages came out 1 ulp apart a step (XLA fuses the bias corrections
  otherwise; docs/performance_log.md, "The optimiser's update traced once per kind of
  subtree")."""

  @jax.jit
  def update_subtree(updates, state, params):
    return tx.update(updates, state, params)

  def update(updates, state, params=None):
    if not isinstance(updates, dict):
      return tx.update(updates, state, params)
    # Under optax.multi_transform, a group's trees hold optax.MaskedNode where other groups'
    # leaves are: a subtree without a leaf of this group's is no kind.
    kinds = {k: _kind(u) for k, u in updates.items() if jax.tree.leaves(u)}
    count = collections.Counter(kinds.values())
    alike = [k for k, kind in kinds.items() if count[kind] > 1]
    if not alike:
      return tx.update(updates, state, params)
    rest = [k for k in updates if k not in alike]
    # Each call: its function, what it takes of a parameter-shaped tree, and how its result
    # goes back into one (an alike subtree alone, so that its kind's calls share one trace).
    calls = [(update_subtree, lambda tree, k=k: tree[k], lambda out, k=k: {k: out})
             for k in alike]
    if rest:
      calls.append((tx.update, lambda tree: {k: tree[k] for k in rest}, lambda out: out))
    # The state's parameter-shaped trees (moments) have the updates' structure; its other
    # leaves are shared: every call advances them alike, and the first call's are kept.
    structure = jax.tree.structure(updates)
    per_param = lambda x: jax.tree.structure(x) == structure
    parts, state_def = jax.tree.flatten(state, is_leaf=per_param)
    new_updates, new_parts = {}, [[] for _ in parts]
    for fn, take, put in calls:
      state_part = state_def.unflatten([take(x) if per_param(x) else x for x in parts])
      out, out_state = fn(take(updates), state_part, None if params is None else take(params))
      new_updates.update(put(out))
      for new, x, y in zip(new_parts, parts, state_def.flatten_up_to(out_state)):
        new.append(put(y) if per_param(x) else y)
    parts = [{k: v for d in new for k, v in d.items()} if per_param(x) else new[0]
             for x, new in zip(parts, new_parts)]
    return new_updates, state_def.unflatten(parts)

  return optax.GradientTransformation(tx.init, update)


def _kind(tree) -> tuple:
  """What makes two subtrees alike to jit: their structure and their leaves' shapes and dtypes."""
  return jax.tree.structure(tree), tuple((x.shape, x.dtype) for x in jax.tree.leaves(tree))


def create_optimizer(config: ml_collections.ConfigDict, num_train_examples: int,
                     phase: Phase | None = None,
                     layer_groups=None) -> optax.GradientTransformation:
  """The optimiser of one phase: the config's rule and schedule over the phase's steps, with
  zero updates for parameters outside the phase's trainable subtrees.

  `layer_groups` (optional, from a family that scales learning rates per layer as Caffe's
  lr_mult / decay_mult): (params -> tree of group names, {group: (lr_mult, decay_mult)}).
  """
  phase = phase or phases(config, num_train_examples)[0]
  lr = schedule(config, phase.num_steps, steps_per_epoch(config, num_train_examples))
  if layer_groups is None:
    tx = base_optimizer(config, lr)
  else:
    group_of, mults = layer_groups
    tx = optax.multi_transform(
        {g: base_optimizer(config, _scaled(lr, m), d) for g, (m, d) in mults.items()}, group_of)
  if phase.trainable is None:
    return tx
  trainable = set(phase.trainable)

  def labels(params):
    missing = trainable - set(params)
    if missing:
      raise ValueError(f"Phase {phase.name!r} trains {sorted(missing)}, which the model does "
                       f"not have; its parameter subtrees are {sorted(params)}.")
    return {k: ("train" if k in trainable else "frozen") for k in params}

  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def _scaled(lr: optax.Schedule, factor: float) -> optax.Schedule:
  return lambda step: factor * lr(step)
