"""Colours, textures and clutter of the synthetic data set (`jaxpose.data.synthetic`).

Fills are a colour tuple (solid) or an RGB image of the region (stripes or noise); pattern
scales follow `unit`, the person's pixels per body unit.
"""

import numpy as np
from PIL import Image, ImageDraw

from jaxpose.data import synthetic_geometry as geometry



def colour(rng: np.random.Generator, lo: int = 25, hi: int = 230) -> tuple[int, int, int]:
  """A random RGB colour with channels in [lo, hi]."""
  return tuple((rng.random(3) * (hi + 1 - lo) + lo).astype(int).tolist())


def near_colour(rng: np.random.Generator, base, spread: int) -> tuple[int, int, int]:
  """`base` with each channel moved by up to +-spread."""
  return tuple(int(c) for c in np.clip(np.asarray(base) + rng.integers(-spread, spread + 1, 3),
                                        0, 255))


def texture(rng: np.random.Generator, size: tuple[int, int], unit: float,
             kind: str | None = None, colours=None):
  """A fill: a colour tuple (solid) or a `size` RGB image (stripes or noise).

  Args:
    rng: random generator.
    size: (width, height) of the region to fill.
    unit: pixels per body unit (sets the pattern scale).
    kind: "solid", "stripes" or "noise"; random when None.
    colours: (first, second) colours; random when None.
  """
  if kind is None:
    kind = geometry.pick(rng, ("solid", "stripes", "noise"), (0.45, 0.3, 0.25))
  first, second = (colour(rng), colour(rng)) if colours is None else colours
  if kind == "solid":
    return first
  width, height = size
  if kind == "stripes":
    image = Image.new("RGB", size, first)
    draw = ImageDraw.Draw(image)
    period = max(4.0, rng.uniform(0.1, 0.3) * unit)
    line = max(1, int(round(period * rng.uniform(0.3, 0.6))))
    phi = rng.uniform(0.0, np.pi)
    normal, along = np.array([np.cos(phi), np.sin(phi)]), np.array([-np.sin(phi), np.cos(phi)])
    reach = 0.5 * np.hypot(width, height) + period
    middles = np.array([width, height]) / 2.0 + np.arange(-reach, reach, period)[:, None] * normal
    ends = np.concatenate([middles - reach * along, middles + reach * along], axis=1)
    for xy in ends.tolist():
      draw.line(xy, fill=second, width=line)
    return image
  cell = max(3.0, rng.uniform(0.06, 0.25) * unit)
  small = rng.random((int(height / cell) + 2, int(width / cell) + 2))
  small = np.clip((small - 0.5) * 2.2 * 255 + 128, 0, 255).astype(np.uint8)
  mask = Image.fromarray(small).resize(size, Image.BILINEAR)
  return Image.composite(Image.new("RGB", size, first), Image.new("RGB", size, second), mask)


def _region(polygons: list[np.ndarray], size: tuple[int, int]) -> tuple[int, int, int, int] | None:
  """Integer box (x0, y0, x1, y1) around the polygons, clipped to the image; None if empty."""
  points = np.concatenate(polygons)
  x0, y0 = np.maximum(np.floor(points.min(0)) - 1, 0).astype(int)
  x1, y1 = np.minimum(np.ceil(points.max(0)) + 2, size).astype(int)
  if x1 <= x0 or y1 <= y0:
    return None
  return int(x0), int(y0), int(x1), int(y1)


def fill_polygons(rng: np.random.Generator, image: Image.Image, polygons: list[np.ndarray],
                   unit: float) -> None:
  """Fills the union of `polygons` (pixels) with a random texture, in place."""
  box = _region(polygons, image.size)
  if box is None:
    return
  x0, y0, x1, y1 = box
  mask = Image.new("L", (x1 - x0, y1 - y0), 0)
  draw = ImageDraw.Draw(mask)
  for poly in polygons:
    draw.polygon(geometry.vertices(poly - (x0, y0)), fill=255)
  fill = texture(rng, mask.size, unit)
  image.paste(fill, box if isinstance(fill, tuple) else (x0, y0), mask)


def background(rng: np.random.Generator, size: tuple[int, int], unit: float) -> Image.Image:
  """Gradient and/or noise base with random shapes and limb-like distractors."""
  width, height = size
  kind = geometry.pick(rng, ("gradient", "noise", "both"))
  if kind in ("gradient", "both"):
    phi = rng.uniform(0, 2 * np.pi)
    t = (np.arange(width, dtype=np.float32)[None, :] * np.cos(phi)
         + np.arange(height, dtype=np.float32)[:, None] * np.sin(phi))
    t -= t.min()
    t *= 255.0 / max(float(t.max()), 1.0)
    image = Image.composite(Image.new("RGB", size, colour(rng, 0, 255)),
                            Image.new("RGB", size, colour(rng, 0, 255)),
                            Image.fromarray(t.astype(np.uint8)))
    if kind == "both":
      noise = texture(rng, size, unit, "noise")
      image = Image.blend(image, noise, float(rng.uniform(0.15, 0.4)))
  else:
    first = colour(rng, 0, 255)
    image = texture(rng, size, unit * rng.uniform(1.0, 3.0), "noise",
                     (first, near_colour(rng, first, 90)))

  draw = ImageDraw.Draw(image)
  for _ in range(rng.integers(3, 9)):
    centre = rng.uniform(0, 1, 2) * size
    half = rng.uniform(0.15, 0.6) * unit
    shape = rng.integers(3)
    fill = colour(rng, 0, 255)
    outline = colour(rng, 0, 255) if rng.random() < 0.3 else None
    if shape == 0:
      box = [*(centre - half * rng.uniform(0.5, 1.5, 2)),
             *(centre + half * rng.uniform(0.5, 1.5, 2))]
      draw.ellipse(box, fill=fill, outline=outline)
    else:
      n = 4 if shape == 1 else int(rng.integers(3, 8))
      angles = np.sort(rng.uniform(0, 2 * np.pi, n)) if shape == 2 else (
          rng.uniform(0, np.pi) + np.arange(4) * np.pi / 2)
      radii = half * (rng.uniform(0.5, 1.3, n) if shape == 2 else np.ones(n))
      poly = centre + radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], -1)
      draw.polygon(poly.ravel().tolist(), fill=fill, outline=outline)

  # Limb-like distractors: chains of tapered capsules with clothing-like fills.
  for _ in range(rng.integers(0, 3)):
    p = rng.uniform(0, 1, 2) * size
    angle = rng.uniform(0, 2 * np.pi)
    radius = rng.uniform(0.08, 0.18) * unit
    chain = []
    for _ in range(rng.integers(1, 4)):
      q = p + rng.uniform(0.5, 0.9) * unit * geometry.direction(angle)
      chain.append(geometry.capsule(p, q, radius, 0.8 * radius))
      p, angle, radius = q, angle + rng.uniform(-1.8, 1.8), 0.8 * radius
    fill_polygons(rng, image, chain, unit)
  return image


def occluder_polygon(rng: np.random.Generator, centre: np.ndarray,
                      half: float) -> np.ndarray:
  """A random rectangle, ellipse or blob around `centre`."""
  shape = rng.integers(3)
  axis = geometry.direction(rng.uniform(0, 2 * np.pi))
  aspect = rng.uniform(0.4, 1.0)
  if shape == 0:
    v = np.array([-axis[1], axis[0]])
    corners = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]], np.float64)
    return centre + half * (corners[:, :1] * axis + aspect * corners[:, 1:] * v)
  if shape == 1:
    return geometry.ellipse(centre, axis, half, aspect * half)
  n = int(rng.integers(5, 9))
  angles = np.sort(rng.uniform(0, 2 * np.pi, n))
  radii = half * rng.uniform(0.6, 1.2, n)
  return centre + radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], -1)
