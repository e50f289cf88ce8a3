"""Heat-map families: Stacked Hourglass, Convolutional Pose Machines, Tompson et al."""

from jaxpose import family
from jaxpose.models import hourglass


def hourglass_family(config, skeleton, dtype) -> family.Family:
  kwargs = family.model_kwargs(config)
  try:
    model = hourglass.StackedHourglass(num_joints=skeleton.num_joints, dtype=dtype,
                                       remat=config.remat, **kwargs)
  except TypeError as e:
    raise ValueError(f"Bad config.model for 'hourglass': {e}") from None
  stride = family.check_sizes(config)
  loss_kind, loss_scale = config.loss, config.get("loss_scale", 1.0)

  def loss(params, model_state, batch, rng, *, phase=0):
    del phase
    outputs, model_state = family.apply_train(model, params, model_state, rng, batch["image"])
    total, metrics = family.heatmap_losses(outputs, batch, loss_kind, scale=loss_scale)
    return total, (model_state, metrics)

  def predict(variables, batch, flip_test):
    images = batch["image"]
    maps = model.apply(variables, images, train=False)[-1]
    flipped = None
    if flip_test:
      flipped = model.apply(variables, images[:, :, ::-1, :], train=False)[-1]
    return family.heatmap_predict(maps, flipped, stride=stride,
                                flip_permutation=skeleton.flip_permutation)

  return family.Family("hourglass", skeleton, config.input_size,
                     init=family.init_fn(model, 4 * 2 ** model.depth), loss=loss,
                     predict=predict, target_fn=family.heatmap_target_fn(config), model=model)


