"""Pose of people in photos, from a checkpoint of any family.

  predictor = Predictor("runs/qs")                      # a workdir or a checkpoint step folder
  joints, scores = predictor.predict(image)             # the whole image is the person's box
  joints, scores = predictor.predict(image, box=(x0, y0, x1, y1))

`image` is an [H, W, 3] uint8 (or float in [0, 1]) array or a path; joints come back in its
pixels (0-based, pixel centres at integers), [K, 2], with a confidence per joint (the heat-map
maximum for heat-map families, 1 for coordinate regression). The crop is the one the data sets
use: a square of side 200 x scale around the centre, scale = 1.25 x the box's longer side / 200
(the margin MPII's annotated scales carry), or the whole image's longer side for no box.
Images go through the same jitted prediction as `eval.py` (flip test on by default), in batches.
"""

import os
import re
from typing import Sequence

from absl import logging
import jax
import numpy as np
import tensorflow as tf

from jaxpose import evaluate
from jaxpose import parallel
from jaxpose.data import pipeline
# jaxpose.predict.Person and BOX_MARGIN, as before they moved to the TF-free jaxpose.person.
from jaxpose.person import BOX_MARGIN, Person  # noqa: F401


def read_image(path: str) -> np.ndarray:
  """A photo as [H, W, 3] uint8; ValueError naming the file when it does not decode."""
  try:
    data = tf.io.read_file(path)
    return pipeline.decode_pixels(data).numpy()
  except (tf.errors.OpError, ValueError) as e:
    message = getattr(e, "message", str(e)).splitlines()[0]
    # TensorFlow's op text around the reason: "{{function_node ...}} <reason> [Op:...] name: ".
    message = re.sub(r"\s*\[Op:\w+\].*$", "", re.sub(r"^\{\{[^}]*\}\}\s*", "", message)).rstrip(".")
    raise ValueError(f"{path}: cannot read the image ({message}).") from None


class Predictor:
  """A checkpoint's family, variables and jitted prediction step (see module docstring)."""

  def __init__(self, ckpt: str, *, flip_test: bool = True, batch_size: int = 8):
    self.mesh = parallel.make_mesh()
    self.config, self.family, self.variables, self.step = evaluate.load_checkpoint(ckpt,
                                                                                   self.mesh)
    self.skeleton = self.family.skeleton
    self.batch_size = -(-batch_size // self.mesh.devices.size) * self.mesh.devices.size
    self._step = evaluate.make_predict_step(self.family, self.mesh, flip_test)

  def crop(self, image: np.ndarray, person: Person) -> tuple[np.ndarray, np.ndarray]:
    """(model input [S, S, 3], the 3x3 warp original -> crop pixels)."""
    size = self.family.input_size
    matrix = pipeline.crop_transform(np.asarray(person.center, np.float32), person.scale, 0.0,
                                     size)
    pixels = tf.convert_to_tensor(image)
    pixels = (tf.cast(pixels, tf.float32) / 255.0 if pixels.dtype == tf.uint8
              else tf.cast(pixels, tf.float32))
    crop = pipeline.warp_image(pixels, matrix, size)
    return pipeline.normalize(tf.clip_by_value(crop, 0.0, 1.0)).numpy(), matrix.numpy()

  def predict_many(self, images: Sequence[np.ndarray], people: Sequence[Person]):
    """Joints [N, K, 2] in each image's pixels and scores [N, K]."""
    crops = [self.crop(im, p) for im, p in zip(images, people)]
    joints, scores = [], []
    for start in range(0, len(crops), self.batch_size):
      chunk = crops[start:start + self.batch_size]
      pad = self.batch_size - len(chunk)
      chunk = chunk + [chunk[-1]] * pad  # One compiled batch shape.
      batch = {"image": np.stack([c for c, _ in chunk]),
               "transform": np.stack([m for _, m in chunk]).astype(np.float32)}
      j, s = jax.device_get(self._step(self.variables, parallel.global_batch(batch, self.mesh)))
      if j.ndim == 4:  # Families reporting every stage: the last is the answer.
        j = j[:, -1]
      joints.append(j[:len(chunk) - pad])
      scores.append(s[:len(chunk) - pad])
    return np.concatenate(joints), np.concatenate(scores)

  def predict(self, image, box: Sequence[float] | None = None):
    """One person: (joints [K, 2] in image pixels, scores [K])."""
    if isinstance(image, str):
      image = read_image(image)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f"Expected an [H, W, 3] image; got shape {image.shape}.")
    person = Person.from_box(box) if box is not None else Person.whole_image(*image.shape[:2])
    joints, scores = self.predict_many([image], [person])
    return joints[0], scores[0]


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def expand_paths(paths: Sequence[str]) -> list[str]:
  """Files as given, folders as their images (sorted); a missing path is an error naming it.
  A folder's other files (.tiff, which TensorFlow does not decode; text) are named in a
  warning, not read."""
  out = []
  for p in paths:
    if tf.io.gfile.isdir(p):
      names = sorted(tf.io.gfile.listdir(p))
      out += [tf.io.gfile.join(p, f) for f in names if f.lower().endswith(IMAGE_SUFFIXES)]
      others = [f for f in names if not f.lower().endswith(IMAGE_SUFFIXES)  # Few: stat them.
                and not f.startswith(".") and not tf.io.gfile.isdir(tf.io.gfile.join(p, f))]
      if others:
        more = f" and {len(others) - 5} more" if len(others) > 5 else ""
        logging.warning("%s: skipped %d file(s) without an image suffix (%s): %s%s", p,
                        len(others), " ".join(IMAGE_SUFFIXES), ", ".join(others[:5]), more)
    elif tf.io.gfile.exists(p):
      out.append(p)
    else:
      raise FileNotFoundError(f"{p}: no such image or folder.")
  return out


def check_outputs(out_dir: str, paths: Sequence[str]) -> None:
  """Before any work: ValueError naming the files when two inputs would write the same outputs
  (`write_outputs`' <stem>.json / .png: photo.jpg and photo.png, or one name in two folders),
  or when an output would replace an input (--out the photos' own folder)."""
  inputs = {os.path.realpath(p): p for p in paths}
  owners = {}
  for path in paths:
    outputs = output_paths(out_dir, path)
    if outputs in owners and owners[outputs] != path:
      raise ValueError(f"{owners[outputs]} and {path} would both write "
                       f"{' and '.join(outputs)}; predict them into different --out folders.")
    owners[outputs] = path
    for target in outputs:
      overwritten = inputs.get(os.path.realpath(target))
      if overwritten is not None:
        raise ValueError(f"{target} would overwrite the input {overwritten}; choose another "
                         "--out folder.")


def output_paths(out_dir: str, path: str) -> tuple[str, str]:
  """(<out_dir>/<name>.json, <out_dir>/<name>.png): what `write_outputs` writes for `path`."""
  stem = os.path.splitext(os.path.basename(path))[0]
  return os.path.join(out_dir, f"{stem}.json"), os.path.join(out_dir, f"{stem}.png")


def write_outputs(out_dir: str, path: str, image: np.ndarray, joints, scores, skeleton,
                  person: Person) -> list[str]:
  """<out_dir>/<name>.json (keypoints in image pixels, scores) and <name>.png (the skeleton)."""
  import json  # pylint: disable=g-import-not-at-top
  from jaxpose import drawing  # pylint: disable=g-import-not-at-top
  json_path, png_path = output_paths(out_dir, path)
  os.makedirs(out_dir, exist_ok=True)
  record = {"image": path, "height": int(image.shape[0]), "width": int(image.shape[1]),
            "center": list(person.center), "scale": person.scale,
            "keypoints": [{"name": n, "x": float(x), "y": float(y), "score": float(s)}
                          for n, (x, y), s in zip(skeleton.joints, joints, scores)]}
  with open(json_path, "w") as f:
    json.dump(record, f, indent=1)
  drawing.save_png(drawing.draw_skeleton(image, joints, np.ones(len(joints)), skeleton),
                   png_path)
  return [json_path, png_path]
