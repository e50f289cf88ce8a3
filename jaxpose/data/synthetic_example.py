"""One synthetic person, rendered and JPEG-encoded: what a worker process of the TFDS build
(`jaxpose.data.synthetic`) runs for each example.

The renderer lives in four modules, each drawing from the example's one random stream:
synthetic_people (kinematic model, pose and body-part shapes), synthetic_render (placement,
painting, occluders, joint status), synthetic_textures (colours, textures, background clutter)
and synthetic_geometry (shapes); `render` composes them. This module imports no TensorFlow, so
the build's workers start without it (and without the notices its libraries print on stderr at
import, which would reach the console from a worker: `runtime.start_up_notices_captured` only
sees the main process).
"""

import dataclasses
import io

import numpy as np
from PIL import Image

from jaxpose.data import synthetic_people
from jaxpose.data import synthetic_render
from jaxpose.data import synthetic_textures

JPEG_QUALITY = 90


@dataclasses.dataclass
class RenderInfo:
  """Renderer internals for tests and debugging."""

  back_view: bool
  rotation_deg: float
  yaw_deg: float
  truncation_mode: bool
  num_occluders: int
  label_map: np.ndarray  # [H, W] uint8; part id + 32 * layer, 255 occluder, 0 background.

  def part_pixels(self, part: str, layers: tuple[int, ...] | None = None) -> int:
    """Number of pixels showing `part` (optionally only the given `LAYERS` values)."""
    pid, layer_step = synthetic_people.PART_ID[part], synthetic_people.LAYER
    labels = self.label_map[self.label_map != synthetic_render.OCCLUDER_LABEL]
    if layers is None:
      return int(np.sum((labels % layer_step) == pid))
    return int(sum(np.sum(labels == pid + layer_step * layer) for layer in layers))


def render(seed: int, index: int) -> tuple[dict[str, np.ndarray], RenderInfo]:
  """Renders example `index` of the stream `seed`; returns the features and internals."""
  rng = np.random.default_rng([seed, index])
  person = synthetic_people.sample_person(rng)
  placement = synthetic_render.place(rng, person)
  unit = placement.unit
  image = synthetic_textures.background(rng, placement.size, unit)
  label_image = synthetic_render.label_map(person, placement)
  synthetic_render.paint_person(rng, image, label_image, person, unit)
  joints = placement.to_pixels(person.joints)
  head_box, norm_size = synthetic_render.head_box(person, placement)
  num_occluders = synthetic_render.occluders(rng, image, label_image, joints, unit)
  labels = np.asarray(label_image)
  inside, occluded = synthetic_render.joint_status(labels, joints)
  example = {
      "image": np.asarray(image, dtype=np.uint8),
      "joints": joints.astype(np.float32),
      "visible": inside.astype(np.float32),
      "occluded": occluded.astype(np.float32),
      "center": placement.centre.astype(np.float32),
      "scale": np.float32(placement.box / 200.0),
      "head_box": head_box.astype(np.float32),
      "norm_size": np.float32(norm_size),
      "id": np.int64(index),
  }
  info = RenderInfo(back_view=person.back_view, rotation_deg=placement.rotation_deg,
                    yaw_deg=float(np.rad2deg(person.yaw)),
                    truncation_mode=placement.truncation_mode, num_occluders=num_occluders,
                    label_map=labels)
  return example, info


def render_example(seed: int, index: int) -> dict[str, np.ndarray]:
  """Example `index` of the stream `seed`: the feature dict of `jaxpose.data`."""
  return render(seed, index)[0]


def encoded_example(seed: int, index: int) -> dict[str, object]:
  """`render_example` with the image JPEG-encoded (what the TFDS builder stores)."""
  example = render_example(seed, index)
  buffer = io.BytesIO()
  Image.fromarray(example["image"]).save(buffer, format="JPEG", quality=JPEG_QUALITY)
  example["image"] = buffer.getvalue()
  return example
