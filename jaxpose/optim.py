"""Optimisers, learning-rate schedules and training phases (no model, no data).

A config may declare `phases`: `((name, num_steps, trainable), ...)`, run in order by the one
training loop (a DeepPose cascade's stages, IEF's fixed-path steps, Tompson's detector /
spatial model / joint training). `trainable` is a comma-separated list of top-level parameter
subtrees (e.g. "stage2" or "detector,spatial"), or "*" for all; the others get zero updates
(`optax.multi_transform`). Each phase gets a fresh optimiser state and its own schedule over its
steps. Without `phases`, one phase trains everything for `total_steps`.
"""

import dataclasses

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
  """The config's update rule with learning rate `lr` (and weight decay x `decay_mult`)."""
  opt = config.optimizer
  if opt.name == "rmsprop":
    # PyTorch's RMSprop (the reference's): alpha 0.99, eps 1e-8 outside the square root.
    return optax.rmsprop(lr, decay=0.99, eps=1e-8, eps_in_sqrt=False)
  if opt.name == "adam":
    return optax.adam(lr)
  if opt.name == "sgd":  # Caffe's SGD: L2 weight decay added to the gradient, then momentum.
    return optax.chain(
        optax.add_decayed_weights(opt.get("weight_decay", 0.0) * decay_mult),
        optax.sgd(lr, momentum=opt.get("momentum", 0.9)))
  raise ValueError(f"Unknown config.optimizer.name {opt.name!r}; known: 'rmsprop', 'adam', "
                   "'sgd'.")


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
