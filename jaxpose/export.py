r"""A checkpoint as a serving function: `jax.export` and a TF SavedModel (jax2tf).

  python -m jaxpose.export --ckpt runs/qs --out exported/qs

Signature of both (polymorphic in the batch size and the image size):

  images  uint8   [N, H, W, 3]   RGB photos
  boxes   float32 [N, 4]         x0, y0, x1, y1 of each person, in image pixels
  ->
  joints  float32 [N, K, 2]      (x, y) in image pixels (0-based, pixel centres at integers)
  scores  float32 [N, K]         per-joint confidence (1 for coordinate regression)

The crop is `jaxpose.predict`'s: a square of 1.25 x the box's longer side around its centre,
resampled (bilinear) on the device, with the family's prediction (flip test on by default) and
the inverse warp inside. Writes OUT/pose.jax_exported (`jax.export.deserialize` it and `.call`)
and OUT/saved_model (`tf.saved_model.load(...).serve(images, boxes)`).
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp

from jaxpose import parallel
from jaxpose import person
from jaxpose import runtime
from jaxpose.data import device_augment


def serving_function(family, variables, flip_test: bool = True):
  """(images uint8 [N,H,W,3], boxes [N,4]) -> (joints [N,K,2] image px, scores [N,K])."""
  size = family.input_size
  half = (size - 1) / 2.0

  def serve(images, boxes):
    boxes = boxes.astype(jnp.float32)
    center = 0.5 * (boxes[:, :2] + boxes[:, 2:])
    side = person.BOX_MARGIN * jnp.max(boxes[:, 2:] - boxes[:, :2], axis=1)
    zoom = size / side  # Crop pixels per image pixel.
    # Crop pixel (u, v, 1) -> image pixel: (u - half) / zoom + centre.
    inverse = jnp.zeros((boxes.shape[0], 2, 3), jnp.float32)
    inverse = inverse.at[:, 0, 0].set(1 / zoom).at[:, 1, 1].set(1 / zoom)
    inverse = inverse.at[:, :, 2].set(center - half / zoom[:, None])
    crops = jax.vmap(device_augment.warp_bilinear, in_axes=(0, 0, None))(images, inverse, size)
    crops = jnp.clip(crops / 255.0, 0.0, 1.0) - 0.5  # pipeline.normalize
    joints, scores = family.predict(variables, {"image": crops}, flip_test)
    if joints.ndim == 4:  # Every stage reported: the last is the answer.
      joints = joints[:, -1]
    return (joints - half) / zoom[:, None, None] + center[:, None, :], scores

  return serve


def export(ckpt: str, out: str, *, flip_test: bool = True) -> dict[str, str]:
  """Writes both forms of `ckpt`'s serving function into `out`; returns their paths."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  from jaxpose import evaluate  # pylint: disable=g-import-not-at-top
  _, family, variables, _ = evaluate.load_checkpoint(ckpt, parallel.make_mesh())
  variables = jax.device_get(variables)
  serve = serving_function(family, variables, flip_test)
  os.makedirs(out, exist_ok=True)
  n, h, w = jax.export.symbolic_shape("n, h, w")
  exported = jax.export.export(jax.jit(serve))(
      jax.ShapeDtypeStruct((n, h, w, 3), jnp.uint8), jax.ShapeDtypeStruct((n, 4), jnp.float32))
  paths = {"jax": os.path.join(out, "pose.jax_exported"),
           "saved_model": os.path.join(out, "saved_model")}
  with open(paths["jax"], "wb") as f:
    f.write(exported.serialize())
  module = tf.Module()
  converted = jax2tf.convert(serve, polymorphic_shapes=["(n, h, w, 3)", "(n, 4)"],
                             native_serialization_platforms=("cpu", "cuda", "tpu"))
  module.serve = tf.function(converted, autograph=False, input_signature=[
      tf.TensorSpec([None, None, None, 3], tf.uint8, name="images"),
      tf.TensorSpec([None, 4], tf.float32, name="boxes")])
  tf.saved_model.save(module, paths["saved_model"])
  return paths


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m jaxpose.export", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--ckpt", required=True, help="a workdir or checkpoint step folder")
  parser.add_argument("--out", required=True, help="folder for the exported files")
  parser.add_argument("--noflip_test", action="store_true", help="no flip test inside")
  args = parser.parse_args(argv)
  runtime.setup()  # As the other entry points: a quiet console, TensorFlow's notices off it.
  try:
    paths = export(args.ckpt, args.out, flip_test=not args.noflip_test)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  for kind, path in paths.items():
    print(f"wrote {path} ({kind})")


if __name__ == "__main__":
  runtime.exit_without_teardown(main)
