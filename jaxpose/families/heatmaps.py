"""Heat-map families: Stacked Hourglass, Convolutional Pose Machines, Tompson et al."""

import dataclasses

import jax
import jax.numpy as jnp

from jaxpose import family
from jaxpose.models import cpm
from jaxpose.models import hourglass
from jaxpose.models import tompson


def hourglass_family(config, skeleton, dtype) -> family.Family:
  kwargs = family.model_kwargs(config)
  try:
    model = hourglass.StackedHourglass(num_joints=skeleton.num_joints, dtype=dtype,
                                       remat=config.remat, **kwargs)
  except TypeError as e:
    raise ValueError(f"Bad config.model for 'hourglass': {e}") from None
  codec = family.heatmap_codec(config)
  loss_kind, loss_scale = config.loss, config.get("loss_scale", 1.0)

  def loss(params, model_state, batch, rng, *, phase=0):
    del phase
    batch = family.with_heatmap_targets(batch, codec)
    outputs, model_state = family.apply_train(model, params, model_state, rng, batch["image"])
    total, metrics = family.heatmap_losses(outputs, batch, loss_kind, scale=loss_scale)
    return total, (model_state, metrics)

  heatmaps, predict = family.heatmap_heads(
      lambda v, x: model.apply(v, x, train=False)[-1], codec, skeleton.flip_permutation)
  return family.Family("hourglass", skeleton, config.input_size,
                       init=family.init_fn(model, 4 * 2 ** model.depth), loss=loss,
                       predict=predict, model=model, heatmaps=heatmaps, codec=codec,
                       segments=hourglass_segments(model, codec, loss_kind, loss_scale))


def hourglass_segments(model: hourglass.StackedHourglass, codec, loss_kind: str,
                       loss_scale: float) -> family.Segmentation:
  """The hourglass's loss as segments: the stem (`hourglass.Stem`, on the root's STEM_LAYERS),
  then every stack (`hourglass.Stack`, on its "stackI" subtree) with its heat maps' loss. Alike
  stacks share their programs, so 8 stacks compile what 2 do.

  Every bottleneck's BatchNorm-ReLU is recomputed in the backward pass (`layers.bn_relu_conv`),
  whatever config.remat says: inside one program XLA recomputes the ReLU masks, but across
  programs they are outputs (235 of a stack's 880 MB of residuals). Recomputed, the 8-stack's
  step at batch 8 held 4,952 MB instead of 8,058 (docs/performance_log.md, "The stacks as
  programs of their own, a third time")."""
  stem, middle, last = hourglass.segment_modules(model, recompute=True)

  def stem_apply(params, model_state, carry, batch, rng, *, phase=0):
    del carry, phase  # The first segment: the images.
    x, model_state = family.apply_train(stem, params, model_state, rng, batch["image"])
    return (x, jnp.zeros((), jnp.float32)), model_state

  def stack_apply(stack: hourglass.Stack):
    def apply(params, model_state, x, batch, rng, *, phase=0):
      del phase
      (x, maps), model_state = family.apply_train(stack, params, model_state, rng, x)
      loss, _ = family.heatmap_losses((maps,), batch, loss_kind, scale=loss_scale)
      return (None if stack.last else x, loss), model_state
    return apply

  stacks = {False: stack_apply(middle), True: stack_apply(last)}
  n = model.num_stacks
  segments = [family.Segment("stem", hourglass.STEM_LAYERS, nested=False, apply=stem_apply)]
  segments += [family.Segment("last" if i == n - 1 else "stack", (f"stack{i}",), nested=True,
                              apply=stacks[i == n - 1], metric=f"loss_stack{i}")
               for i in range(n)]
  return family.Segmentation(lambda batch: family.with_heatmap_targets(batch, codec),
                             tuple(segments))




def _with_background(batch):
  """Targets and weights with CPM's background map: 1 - max over the parts, always weighted."""
  targets, weights = batch["targets"], batch["target_weight"]
  background = jnp.clip(1.0 - jnp.max(targets, axis=-1, keepdims=True), 0.0, 1.0)
  return dict(batch, targets=jnp.concatenate([targets, background], axis=-1),
              target_weight=jnp.concatenate([weights, jnp.ones_like(weights[:, :1])], axis=-1))


def cpm_layer_groups(params):
  """The release's lr_mult / decay_mult: stage 1's layers 5x (weights) and 10x (biases),
  every other bias 2x; biases never decayed."""
  def group(path, _):
    stage1 = getattr(path[0], "key", None) == "stage1"
    bias = getattr(path[-1], "key", None) == "bias"
    return ("stage1_" if stage1 else "") + ("bias" if bias else "weight")
  return jax.tree_util.tree_map_with_path(group, params)


CPM_LR_MULT = {"stage1_weight": (5.0, 1.0), "stage1_bias": (10.0, 0.0), "weight": (1.0, 1.0),
               "bias": (2.0, 0.0)}


# config.model.variant: the original release (two 9x9 trunks) or its VGG variant.
CPM_VARIANTS = {"original": cpm.CPM, "vgg": cpm.CPMVGG}


def cpm_family(config, skeleton, dtype) -> family.Family:
  """Convolutional Pose Machines (config.model.variant: "original" or "vgg"): K part maps
  plus background at the model's stride (8 in the releases), every stage supervised; the
  centre map is a Gaussian at the crop centre (where the person's centre is in every crop the
  pipeline cuts), sigma 21 px at 368 px."""
  kwargs = family.model_kwargs(config)
  k, size = skeleton.num_joints, config.input_size
  variant = kwargs.pop("variant", "original")
  if variant not in CPM_VARIANTS:
    raise ValueError(f"config.model.variant={variant!r}; expected one of {list(CPM_VARIANTS)}.")
  try:
    model = CPM_VARIANTS[variant](num_parts=k + 1, dtype=dtype, **kwargs)
  except TypeError as e:
    raise ValueError(f"Bad config.model for 'cpm': {e}") from None
  center = cpm.center_map(size, jnp.full((2,), (size - 1) / 2.0), sigma=21.0 * size / 368.0)
  codec = family.heatmap_codec(config)
  if codec.stride != model.stride:
    raise ValueError(f"config.input_size / config.output_size = {codec.stride} must equal "
                     f"the CPM's stride {model.stride}.")
  loss_kind, loss_scale = config.loss, config.get("loss_scale", 1.0)

  def centers(images):
    # A compile-time constant; the barrier keeps XLA from constant-folding its pooling, which
    # takes seconds per batch shape (and logs "Constant folding ... is taking > 1s").
    return jax.lax.optimization_barrier(jnp.broadcast_to(center, images.shape[:3] + (1,)))

  def loss(params, model_state, batch, rng, *, phase=0):
    del phase
    batch = family.with_heatmap_targets(batch, codec)
    images = batch["image"]
    outputs, model_state = family.apply_train(model, params, model_state, rng, images,
                                              centers(images))
    if loss_kind == "softmax_ce":  # The parts only; the background map stays free.
      total, metrics = family.heatmap_losses([o[..., :k] for o in outputs], batch, loss_kind,
                                             scale=loss_scale)
    else:
      total, metrics = family.heatmap_losses(outputs, _with_background(batch), loss_kind,
                                             scale=loss_scale)
    return total, (model_state, metrics)

  heatmaps, predict = family.heatmap_heads(  # The parts' maps; not the background.
      lambda v, x: model.apply(v, x, centers(x), train=False)[-1][..., :k], codec,
      skeleton.flip_permutation)

  groups = (cpm_layer_groups, CPM_LR_MULT) if config.optimizer.get("caffe_lr_mult") else None
  return family.Family("cpm", skeleton, size, init=family.init_fn(model, 32, 1), loss=loss,
                       predict=predict, layer_groups=groups, model=model, heatmaps=heatmaps,
                       codec=codec)


def tompson_family(config, skeleton, dtype) -> family.Family:
  """Tompson et al.: the multi-resolution part detector, optionally with its spatial model.

  Phases (config.phases, by name): "detector" trains the detector's loss only, "spatial" the
  spatial model's only (on the detector it is given, frozen by its trainable subtree), any
  other name both; without phases both losses train together. The spatial model's priors start
  from the training set's joint-displacement histograms, measured when training starts.
  """
  kwargs = family.model_kwargs(config)
  k, size = skeleton.num_joints, config.input_size
  try:
    model = tompson.Tompson(num_joints=k, dtype=dtype, **kwargs)
  except TypeError as e:
    raise ValueError(f"Bad config.model for 'tompson': {e}") from None
  codec = family.heatmap_codec(config)
  if model.spatial_model and model.spatial_log:  # Log beliefs, trained as softmax logits.
    codec = dataclasses.replace(codec, scores="softmax")
  if codec.stride != model.output_stride:
    raise ValueError(f"config.input_size / config.output_size = {codec.stride} must equal "
                     f"config.model.output_stride = {model.output_stride}.")
  names = [str(p[0]) for p in config.get("phases") or ()]
  loss_kind, loss_scale = config.loss, config.get("loss_scale", 1.0)

  def loss(params, model_state, batch, rng, *, phase=0):
    batch = family.with_heatmap_targets(batch, codec)
    outputs, model_state = family.apply_train(model, params, model_state, rng, batch["image"])
    name = names[phase] if names else ""
    total, metrics = 0.0, {}
    if name != "spatial":
      total, metrics = family.heatmap_losses(outputs[:1], batch, loss_kind, scale=loss_scale)
    if len(outputs) > 1 and name != "detector":  # Log beliefs: a spatial softmax's logits.
      spatial, m = family.heatmap_losses(outputs[1:], batch, "softmax_ce", scale=loss_scale)
      total = total + spatial
      metrics["loss_spatial"] = m["loss_stack0"]
    return total, (model_state, metrics)

  def begin_phase(phase, variables, context):
    if phase > 0 or not model.spatial_model:
      return variables
    joints, visible = context.ground_truth
    hist = tompson.displacement_histograms(joints, visible, codec.map_size, codec.stride)
    return dict(variables, params=tompson.init_priors(variables["params"], hist))

  heatmaps, predict = family.heatmap_heads(lambda v, x: model.apply(v, x)[-1], codec,
                                           skeleton.flip_permutation)

  init_size = 8 * model.output_stride  # Banks pool twice more; the spatial kernels need the map.
  init = family.init_fn(model, size if model.spatial_model else init_size)
  return family.Family("tompson", skeleton, size, init=init, loss=loss, predict=predict,
                       begin_phase=begin_phase, model=model, heatmaps=heatmaps, codec=codec)
