"""Drawing primitives on numpy arrays and PIL: skeleton overlays, image grids, PNG output.

Below the data sets and the evaluation alike (the synthetic data set's preview uses it;
`jaxpose.visualize` adds plots on top). Imports only `jaxpose.skeletons`.
"""

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from jaxpose import skeletons

# Colours of the person's left side, right side and centre line (RGB).
LEFT_COLOUR = (40, 140, 255)
RIGHT_COLOUR = (255, 70, 50)
CENTRE_COLOUR = (60, 220, 90)
HEAD_BOX_COLOUR = (255, 220, 0)


def _side(name: str) -> int:
  """+1 for a left joint, -1 for a right joint, 0 for a joint on the centre line."""
  name = name.lower()
  if name.startswith(("l_", "left")):
    return 1
  if name.startswith(("r_", "right")):
    return -1
  return 0


def _side_colour(side: int) -> tuple[int, int, int]:
  return {1: LEFT_COLOUR, -1: RIGHT_COLOUR, 0: CENTRE_COLOUR}[side]


def to_uint8(array: np.ndarray) -> np.ndarray:
  """Returns an HxWx3 uint8 copy; float input in [0, 1] is scaled by 255, else clipped."""
  array = np.asarray(array)
  if np.issubdtype(array.dtype, np.floating):
    if array.size and np.nanmax(array) <= 1.0:
      array = array * 255.0
    array = np.nan_to_num(array)
  array = np.clip(np.round(array), 0, 255).astype(np.uint8)
  if array.ndim == 2:
    array = np.repeat(array[..., None], 3, axis=-1)
  if array.shape[-1] == 1:
    array = np.repeat(array, 3, axis=-1)
  return np.ascontiguousarray(array[..., :3])


def draw_skeleton(
    image: np.ndarray,
    joints: np.ndarray,
    visible: np.ndarray,
    skeleton: skeletons.Skeleton = skeletons.MPII,
    occluded: np.ndarray | None = None,
    head_box: np.ndarray | None = None,
) -> np.ndarray:
  """Returns a copy of `image` with the skeleton drawn over it.

  Left limbs and joints are blue, right ones red, centre ones green. Visible joints are
  filled dots with a dark rim; occluded joints (visible and `occluded` = 1) are hollow rings;
  joints with `visible` = 0 are not drawn, nor limbs that touch them. `head_box`
  (x1, y1, x2, y2) is drawn as a yellow rectangle when given and not all zero.

  Args:
    image: HxWx3 (or HxW) image, uint8 or float in [0, 1].
    joints: [K, 2] (x, y) in 0-based pixels of `image`.
    visible: [K] 1 where the joint is annotated.
    skeleton: joint set giving the names (for the sides) and the limbs.
    occluded: optional [K] 1 where the joint is annotated but hidden.
    head_box: optional [4] head box.

  Returns:
    uint8 HxWx3 array.
  """
  canvas = Image.fromarray(to_uint8(image))
  draw = ImageDraw.Draw(canvas)
  joints = np.asarray(joints, np.float64).reshape(-1, 2)
  visible = np.asarray(visible).reshape(-1) > 0
  occluded = (np.zeros(len(joints), bool) if occluded is None
              else np.asarray(occluded).reshape(-1) > 0)
  size = min(canvas.size)
  width = max(1, int(round(size / 110)))
  radius = max(2, int(round(size / 70)))

  if head_box is not None and np.any(np.asarray(head_box) != 0):
    x1, y1, x2, y2 = np.rint(np.asarray(head_box, np.float64)).tolist()
    draw.rectangle([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)],
                   outline=HEAD_BOX_COLOUR, width=width)

  sides = [_side(name) for name in skeleton.joints]
  # PIL truncates float coordinates; round so marks are centred on the pixel centres.
  points = np.rint(np.nan_to_num(joints)).astype(int).tolist()
  for a, b in skeleton.limbs:
    if not (visible[a] and visible[b]):
      continue
    side = sides[a] if sides[a] == sides[b] else 0
    draw.line([tuple(points[a]), tuple(points[b])], fill=_side_colour(side), width=width)

  for k, (x, y) in enumerate(points):
    if not visible[k]:
      continue
    colour = _side_colour(sides[k])
    box = [x - radius, y - radius, x + radius, y + radius]
    if occluded[k]:
      draw.ellipse(box, fill=None, outline=colour, width=max(1, width))
    else:
      draw.ellipse(box, fill=colour, outline=(0, 0, 0), width=1)
  return np.asarray(canvas)


def image_grid(
    images: Sequence[np.ndarray],
    ncols: int,
    titles: Sequence[str] | None = None,
    *,
    pad: int = 4,
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
  """Tiles images (of any sizes) into one uint8 array, `ncols` per row.

  Every cell is as large as the largest image; smaller images sit at the cell's top-left
  corner on `background`. With `titles`, a line of text is written above each image.
  """
  if not images:
    raise ValueError("image_grid needs at least one image.")
  if titles is not None and len(titles) != len(images):
    raise ValueError(f"Got {len(titles)} titles for {len(images)} images.")
  arrays = [to_uint8(im) for im in images]
  ncols = max(1, min(ncols, len(arrays)))
  nrows = -(-len(arrays) // ncols)
  cell_h = max(a.shape[0] for a in arrays)
  cell_w = max(a.shape[1] for a in arrays)
  font = ImageFont.load_default()
  title_h = 0
  if titles is not None:
    title_h = max(_text_height(font, t) for t in titles) + 4
  grid = Image.new("RGB", (ncols * (cell_w + pad) + pad,
                           nrows * (cell_h + title_h + pad) + pad), background)
  draw = ImageDraw.Draw(grid)
  for i, array in enumerate(arrays):
    row, col = divmod(i, ncols)
    x = pad + col * (cell_w + pad)
    y = pad + row * (cell_h + title_h + pad)
    if titles is not None:
      draw.text((x, y), str(titles[i]), fill=(0, 0, 0), font=font)
    grid.paste(Image.fromarray(array), (x, y + title_h))
  return np.asarray(grid)


def _text_height(font, text: str) -> int:
  left, top, right, bottom = font.getbbox(str(text) or " ")
  del left, right
  return int(bottom - min(top, 0))


def save_png(array: np.ndarray, path: str) -> None:
  """Writes an image array (uint8, or float in [0, 1]) to `path` as PNG."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  Image.fromarray(to_uint8(array)).save(path, format="PNG")
