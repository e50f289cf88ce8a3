"""What a model family adds to the shared spine: its module, targets, loss and decoding.

The trainer, pipeline and evaluator only ever talk to a `Family`. A new family (CPM, Tompson,
DeepPose, IEF) writes its model file, picks or writes a codec, and adds one branch to
`create_family`; nothing else changes.
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


@dataclasses.dataclass(frozen=True)
class Family:
  """A model plus the pieces that connect it to the data and the metrics."""

  name: str
  model: nn.Module
  input_size: int
  # tf.data: (joints [K,2] input px, visible [K], input_size) -> dict of target tensors.
  target_fn: Callable[..., dict]
  # (model outputs, batch) -> (scalar loss, dict of scalar metrics).
  loss_fn: Callable[[Any, Batch], tuple[jax.Array, dict]]
  # (outputs, flipped-input outputs or None) -> (joints [B,K,2] in input px, scores [B,K]).
  predict_fn: Callable[[Any, Any], tuple[jax.Array, jax.Array]]


# ---------------------------------------------------------------------------------------------
# Heat-map families (Stacked Hourglass; CPM and Tompson share these pieces).


def heatmap_losses(outputs, batch, kind: str, stack_weights=None):
  """Loss summed over the stacks / stages (intermediate supervision).

  kind="mse": the paper's mean squared error between predicted and target heat maps, averaged
    over pixels and joints, missing joints weighted 0 (as the PyTorch reference's JointsMSE).
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
      loss = jnp.mean(err)
    elif kind == "softmax_ce":
      b, h, w, k = pred.shape
      logits = pred.reshape(b, h * w, k)
      t = targets.reshape(b, h * w, k)
      t = t / jnp.maximum(jnp.sum(t, axis=1, keepdims=True), 1e-12)
      ce = -jnp.sum(t * jax.nn.log_softmax(logits, axis=1), axis=1)  # [B, K]
      loss = jnp.sum(ce * weights) / jnp.maximum(jnp.sum(weights), 1.0)
    else:
      raise ValueError(f"Unknown loss {kind!r}; expected 'mse' or 'softmax_ce'.")
    metrics[f"loss_stack{i}"] = loss
    total = total + w_stack * loss
  return total, metrics


def heatmap_predict(outputs, flipped_outputs, *, stride: int, flip_permutation):
  """Last stack's heat maps (averaged with the flipped image's, mirrored back and left/right
  swapped) -> argmax with quarter-pixel shift -> input pixels."""
  maps = outputs[-1].astype(jnp.float32)
  if flipped_outputs is not None:
    back = flipped_outputs[-1].astype(jnp.float32)[:, :, ::-1, :]
    maps = 0.5 * (maps + back[..., jnp.asarray(flip_permutation)])
  coords, scores = heatmap.decode(maps)
  return heatmap.heatmap_to_input(coords, stride), scores


def _heatmap_family(name, model, config, skeleton) -> Family:
  input_size, output_size = config.input_size, config.output_size
  if input_size % output_size:
    raise ValueError(f"config.input_size={input_size} must be a multiple of "
                     f"config.output_size={output_size}.")
  stride = input_size // output_size
  sigma = config.sigma

  def target_fn(joints, visible, size):
    del size
    hm_joints = heatmap.input_to_heatmap(joints, stride)
    targets, weight = heatmap.encode(hm_joints, visible, (output_size, output_size), sigma)
    return {"targets": targets, "target_weight": weight}

  loss_kind = config.loss

  def loss_fn(outputs, batch):
    return heatmap_losses(outputs, batch, loss_kind)

  def predict_fn(outputs, flipped):
    return heatmap_predict(outputs, flipped, stride=stride,
                           flip_permutation=skeleton.flip_permutation)

  return Family(name, model, input_size, target_fn, loss_fn, predict_fn)


def create_family(config: ml_collections.ConfigDict) -> Family:
  """Maps a config to its family (plain imports, no registry)."""
  skeleton = skeletons.get(config.dataset.skeleton)
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}.get(config.mixed_precision)
  if dtype is None:
    raise ValueError(f"config.mixed_precision={config.mixed_precision!r}; expected "
                     "'float32' or 'bfloat16'.")
  kwargs = dict(config.model)
  name = kwargs.pop("name")
  if name == "hourglass":
    try:
      model = hourglass.StackedHourglass(num_joints=skeleton.num_joints, dtype=dtype,
                                         remat=config.remat, **kwargs)
    except TypeError as e:
      raise ValueError(f"Bad config.model for {name!r}: {e}") from None
    return _heatmap_family(name, model, config, skeleton)
  raise ValueError(f"Unknown config.model.name {name!r}; known: 'hourglass'.")
