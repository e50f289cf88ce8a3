"""Where to crop a person in a photo: a centre and a scale, from a box or the whole image.

No TensorFlow or JAX: `predict.py` checks its --box, --center and --scale with it before those
libraries load. `jaxpose.predict` (the Predictor) and the exporter crop with it.
"""

import dataclasses
from typing import Sequence

BOX_MARGIN = 1.25  # Crop side / the box's longer side (the margin MPII's annotated scales carry).


@dataclasses.dataclass(frozen=True)
class Person:
  """Where to crop: centre (x, y) in image pixels and scale (crop side / 200)."""

  center: tuple[float, float]
  scale: float

  @classmethod
  def from_box(cls, box: Sequence[float]) -> "Person":
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
      raise ValueError(f"Box {tuple(box)}: expected x0,y0,x1,y1 with x1 > x0 and y1 > y0.")
    return cls(((x0 + x1) / 2, (y0 + y1) / 2), BOX_MARGIN * max(x1 - x0, y1 - y0) / 200)

  @classmethod
  def whole_image(cls, height: int, width: int) -> "Person":
    return cls(((width - 1) / 2, (height - 1) / 2), max(height, width) / 200)
