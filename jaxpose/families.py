"""Model families: the one place that knows a model.

The trainer knows optimisers, shardings, phases and the loop; the evaluator knows splits, the
inverse crop warp and the metrics; neither ever calls a model. They talk to a `Family`:

  init(rng) -> variables
      {"params": ..., other collections}: everything but "params" is the model state
      (BatchNorm statistics today) that `TrainState.model_state` carries opaquely.
  loss(params, model_state, batch, rng, *, phase=0) -> (loss, (model_state, metrics))
      `batch` holds "image" [B,S,S,3], "joints" [B,K,2] crop pixels, "visible" [B,K] and
      whatever `target_fn` added; `rng` is this step's key (dropout, sampled training inputs);
      `phase` indexes the config's training phases (static: one compile per phase).
  predict(variables, batch, flip_test) -> (joints, scores)
      joints in crop pixels, [B,K,2], or [B,T,K,2] for families that report every stage or
      iteration (the last is the answer); scores [B,K]. Flip testing, cascades and scanned
      iterations all happen inside.
  target_fn: optional per-example tf.data targets (a codec's `encode`), or None when the loss
      builds its own targets on the device.
  begin_phase(phase, variables, context) -> variables: optional; runs once when a phase
      starts (e.g. the DeepPose cascade measures the previous stage's errors). Whatever it
      computes lives in the variables, so resuming inside a phase needs nothing else.

What a new family writes:
  1. jaxpose/models/NAME.py, a pure linen module (no configs, no flags).
  2. configs/NAME_DATASET.py with config.model.name = NAME (and a quickstart variant).
  3. Here: a builder `(config, skeleton, dtype) -> Family` that picks a codec from
     jaxpose/codecs and a loss, and one row in `BUILDERS`.
Nothing in the trainer or the evaluator changes; if a family needs more, the interface changes
for every family.
"""

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxpose import skeletons
from jaxpose.codecs import heatmap
from jaxpose.models import hourglass

Batch = dict[str, Any]
Variables = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Family:
  """A model plus the pieces that connect it to the data and the metrics (see module doc)."""

  name: str
  skeleton: skeletons.Skeleton
  input_size: int
  init: Callable[[jax.Array], Variables]
  loss: Callable[..., tuple[jax.Array, tuple[Any, dict]]]
  predict: Callable[[Variables, Batch, bool], tuple[jax.Array, jax.Array]]
  target_fn: Callable[..., dict] | None = None
  begin_phase: Callable[..., Variables] | None = None
  # Per-layer learning-rate / weight-decay multipliers (Caffe's lr_mult, decay_mult):
  # (params -> tree of group names, {group: (lr_mult, decay_mult)}), or None.
  layer_groups: tuple[Callable[[Any], Any], dict[str, tuple[float, float]]] | None = None
  model: nn.Module | None = None  # The linen module, for summaries and users' own code.


@dataclasses.dataclass(frozen=True)
class PhaseContext:
  """What `Family.begin_phase` gets from the trainer.

  predict_train(variables) -> (joints [N,K,2] or [N,T,K,2], ground truth [N,K,2], visible
  [N,K]): the family's predictions on the whole training split without augmentation, in crop
  pixels, with the ground truth in the same frame.
  """

  predict_train: Callable[[Variables], tuple[Any, Any, Any]]


def split_variables(variables: Variables) -> tuple[Any, dict]:
  """{"params": p, **state} -> (p, state)."""
  state = {k: v for k, v in variables.items() if k != "params"}
  return variables["params"], state


def apply_train(model: nn.Module, params, model_state, rng, *args):
  """model.apply in training mode: dropout keyed by `rng`, the model state's collections
  updated. Returns (outputs, new model state)."""
  variables = {"params": params, **model_state}
  rngs = {"dropout": rng}
  if not model_state:
    return model.apply(variables, *args, train=True, rngs=rngs), model_state
  outputs, new_state = model.apply(variables, *args, train=True, rngs=rngs,
                                   mutable=list(model_state))
  return outputs, dict(new_state)


# ---------------------------------------------------------------------------------------------
# Heat-map families (Stacked Hourglass; CPM and Tompson share these pieces).


def heatmap_losses(outputs, batch, kind: str, stack_weights=None, scale: float = 1.0):
  """Loss summed over the stacks / stages (intermediate supervision).

  kind="mse": mean squared error between predicted and target heat maps, averaged over
    pixels and joints, missing joints weighted 0 (the PyTorch reference's JointsMSELoss, whose
    0.5 factor is `scale`).
  kind="softmax_ce": per-joint softmax over the map against the normalised target Gaussian;
    learns far faster from scratch (used by the CPU quickstart), averaged over present joints.
  """
  targets = batch["targets"]
  weights = batch["target_weight"]  # [B, K]
  total = 0.0
  metrics = {}
  stack_weights = stack_weights or (1.0,) * len(outputs)
  for i, (pred, w_stack) in enumerate(zip(outputs, stack_weights)):
    pred = pred.astype(jnp.float32)
    if kind == "mse":
      err = jnp.square(pred - targets) * weights[:, None, None, :]
      loss = scale * jnp.mean(err)
    elif kind == "softmax_ce":
      b, h, w, k = pred.shape
      logits = pred.reshape(b, h * w, k)
      t = targets.reshape(b, h * w, k)
      t = t / jnp.maximum(jnp.sum(t, axis=1, keepdims=True), 1e-12)
      ce = -jnp.sum(t * jax.nn.log_softmax(logits, axis=1), axis=1)  # [B, K]
      loss = scale * jnp.sum(ce * weights) / jnp.maximum(jnp.sum(weights), 1.0)
    else:
      raise ValueError(f"Unknown loss {kind!r}; expected 'mse' or 'softmax_ce'.")
    metrics[f"loss_stack{i}"] = loss
    total = total + w_stack * loss
  return total, metrics


def flip_back_heatmaps(maps, flip_permutation):
  """Heat maps predicted on the mirrored image -> the unmirrored frame, left/right swapped."""
  return maps[:, :, ::-1, :][..., jnp.asarray(flip_permutation)]


def heatmap_predict(maps, flipped_maps, *, stride: int, flip_permutation):
  """Final heat maps (averaged with the mirrored image's, flipped back) -> argmax with the
  quarter-pixel shift -> input pixels. Returns (joints [B,K,2], scores [B,K])."""
  maps = maps.astype(jnp.float32)
  if flipped_maps is not None:
    back = flip_back_heatmaps(flipped_maps.astype(jnp.float32), flip_permutation)
    maps = 0.5 * (maps + back)
  coords, scores = heatmap.decode(maps)
  return heatmap.heatmap_to_input(coords, stride), scores


def _check_sizes(config):
  input_size, output_size = config.input_size, config.output_size
  if input_size % output_size:
    raise ValueError(f"config.input_size={input_size} must be a multiple of "
                     f"config.output_size={output_size}.")
  return input_size // output_size


def heatmap_target_fn(config):
  """Per-example Gaussian targets at the config's output size (tf.data)."""
  stride = _check_sizes(config)
  size = (config.output_size, config.output_size)

  def target_fn(joints, visible, input_size):
    del input_size
    hm_joints = heatmap.input_to_heatmap(joints, stride)
    targets, weight = heatmap.encode(hm_joints, visible, size, config.sigma)
    return {"targets": targets, "target_weight": weight}

  return target_fn


def _init_fn(model: nn.Module, init_size: int, *extra_shapes):
  """rng -> variables, initialised at `init_size` (parameters of a fully convolutional model
  do not depend on the spatial size; an 8-stack hourglass at 256 px takes ~40 s to jit-init)."""

  def init(rng):
    params_rng, dropout_rng = jax.random.split(rng)
    args = [jnp.zeros((1, init_size, init_size, 3), jnp.float32)]
    args += [jnp.zeros((1, init_size, init_size, c), jnp.float32) for c in extra_shapes]
    return model.init({"params": params_rng, "dropout": dropout_rng}, *args, train=False)

  return init


def _hourglass(config, skeleton, dtype) -> Family:
  kwargs = _model_kwargs(config)
  try:
    model = hourglass.StackedHourglass(num_joints=skeleton.num_joints, dtype=dtype,
                                       remat=config.remat, **kwargs)
  except TypeError as e:
    raise ValueError(f"Bad config.model for 'hourglass': {e}") from None
  stride = _check_sizes(config)
  loss_kind, loss_scale = config.loss, config.get("loss_scale", 1.0)

  def loss(params, model_state, batch, rng, *, phase=0):
    del phase
    outputs, model_state = apply_train(model, params, model_state, rng, batch["image"])
    total, metrics = heatmap_losses(outputs, batch, loss_kind, scale=loss_scale)
    return total, (model_state, metrics)

  def predict(variables, batch, flip_test):
    images = batch["image"]
    maps = model.apply(variables, images, train=False)[-1]
    flipped = model.apply(variables, images[:, :, ::-1, :], train=False)[-1] if flip_test \
        else None
    return heatmap_predict(maps, flipped, stride=stride,
                           flip_permutation=skeleton.flip_permutation)

  return Family("hourglass", skeleton, config.input_size,
                init=_init_fn(model, 4 * 2 ** model.depth), loss=loss, predict=predict,
                target_fn=heatmap_target_fn(config), model=model)


def _model_kwargs(config) -> dict:
  kwargs = dict(config.model)
  kwargs.pop("name")
  return kwargs


# ---------------------------------------------------------------------------------------------
# The table of families: config.model.name -> builder. One explicit row per family.

BUILDERS: dict[str, Callable[..., Family]] = {
    "hourglass": _hourglass,
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def create_family(config: ml_collections.ConfigDict) -> Family:
  """Maps a config to its family."""
  skeleton = skeletons.get(config.dataset.skeleton)
  dtype = DTYPES.get(config.mixed_precision)
  if dtype is None:
    raise ValueError(f"config.mixed_precision={config.mixed_precision!r}; expected one of "
                     f"{sorted(DTYPES)}.")
  name = config.model.name
  if name not in BUILDERS:
    raise ValueError(f"Unknown config.model.name {name!r}; known: {sorted(BUILDERS)}.")
  return BUILDERS[name](config, skeleton, dtype)


def eval_shape_variables(family: Family) -> Variables:
  """The family's variables as shapes (no compile, no memory)."""
  return jax.eval_shape(family.init, jax.random.key(0))

