"""2-D shapes and random choices of the synthetic data set (`jaxpose.data.synthetic`).

Points are (x, y) with y pointing down; polygons are [N, 2] float arrays. Angles of
`direction`: 0 points down (+y), pi/2 points right (+x).
"""

import math

import numpy as np

_HALF = np.linspace(0.0, np.pi, 8)
_HALF_ARC = np.stack([np.cos(_HALF), np.sin(_HALF)], axis=1)  # (cos, sin) of a half turn.
FULL_TURN = np.linspace(0.0, 2.0 * np.pi, 25)[:-1]  # The angles of a default ellipse.


def direction(angle: float) -> np.ndarray:
  """Unit vector at `angle` radians; 0 points down (+y), pi/2 points right (+x)."""
  return np.array([np.sin(angle), np.cos(angle)])


def capsule(p: np.ndarray, q: np.ndarray, r0: float, r1: float) -> np.ndarray:
  """Polygon of a tapered capsule from p (radius r0) to q (radius r1)."""
  d = q - p
  u = d / max(math.hypot(d[0], d[1]), 1e-6)
  arc = _HALF_ARC @ np.array([[-u[1], u[0]], [u[0], u[1]]])  # Half circle around +u.
  return np.concatenate([q + r1 * arc, p - r0 * arc])


def ellipse(centre: np.ndarray, axis: np.ndarray, a: float, b: float,
            angles: np.ndarray = FULL_TURN) -> np.ndarray:
  """Points of an ellipse with semi-axis `a` along unit `axis` and `b` across it."""
  v = np.array([-axis[1], axis[0]])
  return centre + a * np.cos(angles)[:, None] * axis + b * np.sin(angles)[:, None] * v


def side_band(p: np.ndarray, q: np.ndarray, near: float, far: float) -> np.ndarray:
  """Rectangle along the segment p-q between offsets `near` and `far` across it.

  Offsets are along n = (-d_y, d_x) for d = q - p (for a segment pointing down the image,
  +n points to the image's left); negative offsets lie on the other side of the axis.
  """
  d = q - p
  n = np.array([-d[1], d[0]]) / max(math.hypot(d[0], d[1]), 1e-6)
  return np.array([p + near * n, q + near * n, q + far * n, p + far * n])


def rotation(angle: float) -> np.ndarray:
  """2x2 matrix rotating by `angle` radians (clockwise on screen, as y points down)."""
  c, s = np.cos(angle), np.sin(angle)
  return np.array([[c, -s], [s, c]])


def vertices(points: np.ndarray) -> list[float]:
  """Flat vertex list for ImageDraw, rounded to the nearest pixel.

  PIL truncates float vertices, which would shift every shape by half a pixel; rounded,
  shapes stay centred on their coordinates with pixel centres at integers.
  """
  return np.rint(points).ravel().tolist()


def random_sign(rng: np.random.Generator) -> float:
  """+1 or -1 with equal probability."""
  return 1.0 if rng.random() < 0.5 else -1.0


def pick(rng: np.random.Generator, options, probs=None):
  """One of `options`, with probabilities `probs` (uniform when None)."""
  u = rng.random()
  if probs is None:
    return options[int(u * len(options))]
  for option, prob in zip(options, probs):
    u -= prob
    if u < 0:
      return option
  return options[-1]
