"""Coordinate-regression families: DeepPose's cascade and Iterative Error Feedback.

Both regress joints normalised to the crop box (DeepPose's N(y; b): u = (x - c) / S with c the
crop centre and S its side), so their codec is `jaxpose.codecs.coordinate`, and both report
every stage / iteration (`predict` returns [B, T, K, 2]).

DeepPose trains stage by stage (one phase per stage, `config.phases`): stage s >= 2 learns on
simulated predictions, truth + d with d ~ N(mean, cov) of stage s-1's errors on the training
set, measured when its phase begins and kept in the "cascade" collection (so a resumed run
samples from the same distribution).

IEF trains by Fixed Path Consolidation (one phase per step t): in phase t each example is fed at
a step s in 0..t, its pose y_s on the fixed path from the mean pose y_0 (no gradient), and the
target is the bounded correction toward the truth. The steps are spread evenly over each batch
(stratified, `fixed_path_poses`), not drawn one by one: the same uniform mixture over steps, and
the path is run only for the examples that need it. The paper computes y_s once, with the
network as phase s - 1 left it, and keeps it through the later phases; here the path is
recomputed in each batch with the weights each phase began with, kept frozen in the "ief_path"
collection (`config.model.fixed_path = "frozen"`, the default): the same poses (for the same
augmented crop), without storing a pose per example (evaluation does not read the frozen
networks: `Family.train_only`). `"current"` runs the path with the weights being trained
instead, as this repository did before 2026-12-06 and the CPU quickstart still does (its config
says why). The mean pose is measured on the training set when training starts, in the "ief"
collection.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxpose import family
from jaxpose.codecs import coordinate
from jaxpose.models import deeppose
from jaxpose.models import ief

# The collections that make IEF's network f (what its fixed path freezes).
_NETWORK = ("params", "batch_stats")


def _network(variables, fn) -> dict:
  """fn applied to every leaf of IEF's network f in `variables` (its `_NETWORK` collections)."""
  return {c: jax.tree.map(fn, variables[c]) for c in _NETWORK if c in variables}


# IEF's bound L on each step's correction, normalised to the crop: the paper's 20 px at 224 px
# (`config.model.max_step` overrides it).
IEF_MAX_STEP = 20.0 / 224.0


def ief_max_step(config) -> float:
  """The config's bound L on one IEF step, normalised to the crop (`IEF_MAX_STEP` by default)."""
  return config.model.get("max_step", IEF_MAX_STEP)


def coordinate_targets(batch, codec: coordinate.CoordinateCodec):
  """The batch's joints in the crop-box frame, 0 where not annotated (never NaN in the loss)."""
  u = coordinate.normalize(batch["joints"], codec.center, codec.input_size)
  return jnp.where(batch["visible"][..., None] > 0, u, 0.0)


def masked_l2(pred, target, visible):
  """Mean squared error over the annotated coordinates (DeepPose's L2; 0 with none)."""
  w = visible[..., None].astype(jnp.float32) * jnp.ones_like(target)
  return jnp.sum(jnp.square(pred - target) * w) / jnp.maximum(jnp.sum(w), 1.0)


def _stages_predict(apply, codec: coordinate.CoordinateCodec, flip_permutation):
  """predict for families whose model maps images to a sequence of normalised poses:
  -> (joints [B, T, K, 2] crop px, scores [B, K])."""

  def predict(variables, batch, flip_test):
    images = batch["image"]
    stages = jnp.stack(apply(variables, images), axis=1)  # [B, T, K, 2]
    if flip_test:
      mirrored = jnp.stack(apply(variables, images[:, :, ::-1, :]), axis=1)
      stages = 0.5 * (stages + codec.flip_back(mirrored, flip_permutation))
    joints, scores = codec.decode(stages)
    return joints, scores[:, -1]

  return predict


def _torso(skeleton) -> tuple[int, int]:
  """Two opposite torso joints (left shoulder, right hip): the pose diameter."""
  return skeleton.index("l_shoulder"), skeleton.index("r_hip")


def deeppose_family(config, skeleton, dtype) -> family.Family:
  kwargs = family.model_kwargs(config)
  size, k = config.input_size, skeleton.num_joints
  try:
    model = deeppose.DeepPoseCascade(k, torso=_torso(skeleton), dtype=dtype, **kwargs)
  except TypeError as e:
    raise ValueError(f"Bad config.model for 'deeppose': {e}") from None
  stages = model.num_stages
  codec = coordinate.CoordinateCodec(size)
  warm_start = config.get("warm_start_stages", False)

  def init(rng):
    params_rng, dropout_rng = jax.random.split(rng)
    image = jnp.zeros((1, size, size, 3), jnp.float32)
    variables = dict(model.init({"params": params_rng, "dropout": dropout_rng}, image))
    eye = jnp.broadcast_to(jnp.eye(2) * 1e-4, (max(stages - 1, 1), k, 2, 2))
    variables["cascade"] = {"mean": jnp.zeros((max(stages - 1, 1), k, 2)), "cov": eye}
    return variables

  def loss(params, model_state, batch, rng, *, phase=0):
    target = coordinate_targets(batch, codec)
    dropout_rng, noise_rng = jax.random.split(rng)
    if phase == 0:
      pred, new_state = family.apply_train(model, params, model_state, dropout_rng,
                                           batch["image"],
                                           method=deeppose.DeepPoseCascade.first_stage)
    else:
      stats = model_state["cascade"]
      delta = deeppose.sample_displacements(noise_rng, stats["mean"][phase - 1],
                                            stats["cov"][phase - 1], target.shape[:1])
      pred, new_state = family.apply_train(model, params, model_state, dropout_rng,
                                           batch["image"], target + delta, phase + 1,
                                           method=deeppose.DeepPoseCascade.refine)
    value = masked_l2(pred, target, batch["visible"])
    return value, (new_state, {f"l2_stage{phase + 1}": value})

  def begin_phase(phase, variables, context):
    """Stage `phase` + 1 (phase >= 1) trains on stage `phase`'s measured errors; with
    `config.warm_start_stages`, stages >= 3 start from the previous stage's weights (the
    paper gives every stage its own parameters and does not say how they start)."""
    if phase == 0:
      return variables
    joints, gt, visible = context.predict_train(variables)
    err = (joints[:, phase - 1] - gt) / size  # [N, K, 2], in crop-box units.
    mean, cov = _error_statistics(np.asarray(err), np.asarray(visible) > 0)
    cascade = dict(variables["cascade"])
    cascade["mean"] = cascade["mean"].at[phase - 1].set(mean)
    cascade["cov"] = cascade["cov"].at[phase - 1].set(cov)
    variables = dict(variables, cascade=cascade)
    if warm_start and phase >= 2:  # Stage phase+1 starts as stage phase (same patch size).
      # Copies: the train step donates the state, and one buffer cannot be donated twice.
      variables.update({c: {**variables[c], f"stage{phase + 1}": jax.tree.map(
          jnp.copy, variables[c][f"stage{phase}"])}
                        for c in ("params", "batch_stats") if c in variables})
    return variables

  apply = lambda v, x: model.apply(v, x, train=False)
  return family.Family("deeppose", skeleton, size, init=init, loss=loss,
                       predict=_stages_predict(apply, codec, skeleton.flip_permutation),
                       begin_phase=begin_phase, model=model, train_only=("cascade",))


def _error_statistics(err: np.ndarray, valid: np.ndarray):
  """Per joint: mean [K, 2] and covariance [K, 2, 2] of the errors of annotated joints."""
  k = err.shape[1]
  mean, cov = np.zeros((k, 2), np.float32), np.tile(np.eye(2, dtype=np.float32) * 1e-4, (k, 1, 1))
  for j in range(k):
    e = err[valid[:, j], j]
    e = e[np.all(np.isfinite(e), axis=1)]
    if len(e) >= 2:
      mean[j] = e.mean(axis=0)
      cov[j] = np.cov(e, rowvar=False) + np.eye(2) * 1e-6
  return jnp.asarray(mean), jnp.asarray(cov)


def ief_family(config, skeleton, dtype) -> family.Family:
  kwargs = family.model_kwargs(config)
  kwargs.pop("max_step", None)  # The family's, not the module's.
  fixed_path = kwargs.pop("fixed_path", "frozen")
  if fixed_path not in ("frozen", "current"):
    raise ValueError(f"config.model.fixed_path={fixed_path!r}: expected 'frozen' (the paper's "
                     "fixed path consolidation) or 'current'.")
  # One frozen copy of the network per later phase: phase t's path step s runs copy s.
  frozen = max(len(config.get("phases") or ()) - 1, 0) if fixed_path == "frozen" else 0
  max_step = ief_max_step(config)
  size, k = config.input_size, skeleton.num_joints
  try:
    if "inception_modules" in kwargs:  # A subset of GoogLeNet's modules by name (small variants).
      kwargs["inception"] = ief.inception_modules(kwargs.pop("inception_modules"))
    model = ief.IEF(k, dtype=dtype, **kwargs)
  except (TypeError, ValueError) as e:
    raise ValueError(f"Bad config.model for 'ief': {e}") from None
  codec = coordinate.CoordinateCodec(size)

  def init(rng):
    params_rng, dropout_rng = jax.random.split(rng)
    image = jnp.zeros((1, size, size, 3), jnp.float32)
    y0 = jnp.zeros((k, 2), jnp.float32)
    variables = dict(model.init({"params": params_rng, "dropout": dropout_rng}, image, y0,
                                num_iterations=1))
    variables["ief"] = {"mean_pose": y0}
    if frozen:  # Filled by begin_phase; here for the state's shape (checkpoints, resume).
      variables["ief_path"] = {f"step{s}": _network(variables, jnp.zeros_like)
                               for s in range(1, frozen + 1)}
    return variables

  def loss(params, model_state, batch, rng, *, phase=0):
    target = coordinate_targets(batch, codec)
    images = batch["image"]
    y0 = jnp.broadcast_to(model_state["ief"]["mean_pose"], target.shape)
    state = {c: v for c, v in model_state.items() if c != "ief_path"}
    path = model_state["ief_path"] if frozen else None

    def correct(s, x, y):  # Step s of the path: the network phase s began with, or the current.
      network = path[f"step{s}"] if path is not None else {"params": params, **state}
      return model.apply({**state, **network}, x, y, train=False, method=ief.IEF.correction)

    y = fixed_path_poses(correct, images, y0, phase)  # The fixed path, no gradient.
    goal = ief.bounded_correction(y, target, max_step)
    pred, new_state = family.apply_train(model, params, state, rng, images, y,
                                         method=ief.IEF.correction)
    value = masked_l2(pred, goal, batch["visible"])
    return value, ({**model_state, **new_state}, {"l2_correction": value})

  def begin_phase(phase, variables, context):
    if phase == 0:
      gt, visible = context.ground_truth
      mean = coordinate.mean_pose((np.asarray(gt, np.float64) - codec.center) / size, visible)
      return dict(variables, ief={"mean_pose": jnp.asarray(mean, jnp.float32)})
    if not frozen:
      return variables
    # The network as the last phase left it (BatchNorm's statistics re-estimated, with
    # config.precise_bn_batches), frozen for the path's step `phase` from now on. Copies: the
    # train step donates the state, and one buffer cannot be donated twice.
    return dict(variables, ief_path={**variables["ief_path"],
                                     f"step{phase}": _network(variables, jnp.copy)})

  def apply(variables, images):
    y0 = variables["ief"]["mean_pose"]
    return tuple(model.apply(variables, images, y0, train=False))

  return family.Family("ief", skeleton, size, init=init, loss=loss,
                       predict=_stages_predict(apply, codec, skeleton.flip_permutation),
                       begin_phase=begin_phase, model=model, stage_name="iteration",
                       train_only=("ief_path",))


def fixed_path_steps(batch_size: int, phase: int) -> list[int]:
  """Where each step's examples start in a batch of FPC's phase `phase`: example i is fed at
  step s when starts[s] <= i < starts[s + 1], as evenly as the batch divides (8 in phase 2:
  3, 3 and 2 examples at steps 0, 1, 2). The batch's order is the shuffled input's, so each
  example's step is as random as a draw, and the steps' counts do not vary from batch to batch."""
  return [-(-s * batch_size // (phase + 1)) for s in range(phase + 1)]


def fixed_path_poses(correct, images, y0, phase: int):
  """The poses at which FPC feeds a batch: example i at its step s (`fixed_path_steps`), y_s =
  y_{s-1} + correct(s, x, y_{s-1}) from y0 [N, K, 2], without gradient. The path's iteration s runs
  only on the examples fed at step s or later: ~N t / 2 examples' passes in phase t instead of
  N t (N = 8 in phase 2: 5 + 2 instead of 16). In evaluation mode the examples do not meet, so
  each pose equals the whole batch's path at its step."""
  starts = fixed_path_steps(images.shape[0], phase)
  y = y0
  for s, start in enumerate(starts[1:], 1):
    y_next = y[start:] + correct(s, images[start:], y[start:])
    y = jnp.concatenate([y[:start], jax.lax.stop_gradient(y_next)], axis=0)
  return y
