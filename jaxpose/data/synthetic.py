"""The built-in synthetic human-pose data set: rendered articulated people, no download.

Every example is one person drawn from a 2-D kinematic model (torso, neck, head, upper and
lower arms and legs, hands, feet) with human joint-angle limits and per-person bone lengths,
seen from the front or the back, turned (narrower shoulders and hips), rotated as a whole
by up to +-30 degrees, placed near the image centre on a cluttered background, and partly
hidden by occluder shapes or cut by the image border. It carries the 16 MPII joints and every
field of the feature dict in `jaxpose.data`.

Left and right. Labels are person-centric as in MPII: a back-facing person's left arm is on the
image's left. So that this is decidable from pixels, every LEFT limb segment (upper arm,
forearm, thigh, shin) carries a white band with black edges along one half of its width, and
right limbs never do. The band is chiral: looking along the limb from its proximal joint to its
distal one, it always lies on the same side in the image (the image's left half of a limb
pointing straight down), in front and back views alike. Training flips the image and swaps
the left/right labels, which moves the band onto a limb labelled RIGHT; a symmetric band
would then say "left" in half the images and "right" in the others, and crossed legs would
be a coin toss. Mirrored, the chiral band lies on the other half, so "band on the first half:
left, band on the other half: right" holds for flipped and unflipped images alike. Front views
also show a face (eyes, mouth, hair cap) and back views the back of the head (hair down to
the neck).

Joint status. `visible` = 0 exactly for joints outside the image (they keep their true,
outside-the-image coordinates); `occluded` = 1 for joints inside the image whose pixel is
covered by an occluder or by another body part drawn over it.

Everything is a pure function of (seed, index): `render_example(TRAIN_SEED, i)` is example
`i` of the train split. `SyntheticPose` serves the renders through TFDS, and `load` builds
(on first use) and reads a split:

  ds = synthetic.load("train", config="tiny", data_dir="/tmp/tfds")

Preview grid: `python -m jaxpose.data.synthetic --preview docs/synthetic_preview.png`.
"""

import argparse
import dataclasses
import functools
import io
import math
import multiprocessing
import os
import time
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxpose import skeletons
from jaxpose import visualize
from jaxpose.data import prepare

TRAIN_SEED = 1_000_003
VALIDATION_SEED = 2_000_029
SPLIT_SEEDS = {"train": TRAIN_SEED, "validation": VALIDATION_SEED}

MIN_SIDE, MAX_SIDE = 160, 256  # Image sides, pixels (inclusive).
MAX_ROTATION_DEG = 30.0  # Global in-plane rotation of the person, uniform in +-this.
BACK_VIEW_PROB = 0.3
TRUNCATION_PROB = 0.2  # Person pushed towards a border (some joints leave the image).
OCCLUDER_COUNT_PROBS = (0.5, 0.35, 0.15)  # P(0, 1, 2 occluder shapes).
JPEG_QUALITY = 90

_SKELETON = skeletons.MPII
_J = {name: i for i, name in enumerate(_SKELETON.joints)}

# Label map: label = part id + _LAYER * layer; 0 is background.
_PARTS = ("torso", "neck", "head",
          "r_upper_arm", "r_forearm", "r_hand", "l_upper_arm", "l_forearm", "l_hand",
          "r_thigh", "r_shin", "r_foot", "l_thigh", "l_shin", "l_foot")
_PART_ID = {name: i + 1 for i, name in enumerate(_PARTS)}
_LAYER = 32
_BASE, _OUTLINE, _MARK_EDGE, _MARK_CORE, _HAIR, _FACE = range(6)
_OCCLUDER_LABEL = 255
MARKED_PARTS = ("l_upper_arm", "l_forearm", "l_thigh", "l_shin")  # The left-side marking.
_MARK_EDGE_COLOUR = (15, 15, 15)
_MARK_CORE_COLOUR = (250, 250, 250)

# A joint counts as seen when its pixel shows one of these parts.
_JOINT_PARTS = {
    "r_ankle": ("r_shin", "r_foot"), "l_ankle": ("l_shin", "l_foot"),
    "r_knee": ("r_thigh", "r_shin"), "l_knee": ("l_thigh", "l_shin"),
    "r_hip": ("torso", "r_thigh"), "l_hip": ("torso", "l_thigh"),
    "pelvis": ("torso", "r_thigh", "l_thigh"), "thorax": ("torso", "neck"),
    "upper_neck": ("neck", "head"), "head_top": ("head",),
    "r_wrist": ("r_forearm", "r_hand"), "l_wrist": ("l_forearm", "l_hand"),
    "r_elbow": ("r_upper_arm", "r_forearm"), "l_elbow": ("l_upper_arm", "l_forearm"),
    "r_shoulder": ("torso", "r_upper_arm"), "l_shoulder": ("torso", "l_upper_arm"),
}

_OWN_PARTS = np.zeros((_SKELETON.num_joints, _LAYER), bool)  # [joint, part id]
for _name, _parts in _JOINT_PARTS.items():
  _OWN_PARTS[_J[_name], [_PART_ID[p] for p in _parts]] = True

_SKIN_TONES = np.array([(255, 219, 180), (234, 192, 134), (198, 134, 66), (161, 102, 56),
                        (141, 85, 36), (92, 56, 34), (224, 172, 105), (241, 194, 160)])
_HAIR_COLOURS = np.array([(20, 16, 14), (60, 38, 24), (110, 70, 35), (200, 160, 90),
                          (140, 140, 140), (150, 60, 25), (40, 40, 60)])

_HALF = np.linspace(0.0, np.pi, 8)
_HALF_ARC = np.stack([np.cos(_HALF), np.sin(_HALF)], axis=1)  # (cos, sin) of a half turn.
_FULL = np.linspace(0.0, 2.0 * np.pi, 25)[:-1]


# ----------------------------------------------------------------------------------------
# Geometry.


def _dir(angle: float) -> np.ndarray:
  """Unit vector at `angle` radians; 0 points down (+y), pi/2 points right (+x)."""
  return np.array([np.sin(angle), np.cos(angle)])


def _capsule(p: np.ndarray, q: np.ndarray, r0: float, r1: float) -> np.ndarray:
  """Polygon of a tapered capsule from p (radius r0) to q (radius r1)."""
  d = q - p
  u = d / max(math.hypot(d[0], d[1]), 1e-6)
  arc = _HALF_ARC @ np.array([[-u[1], u[0]], [u[0], u[1]]])  # Half circle around +u.
  return np.concatenate([q + r1 * arc, p - r0 * arc])


def _ellipse(centre: np.ndarray, axis: np.ndarray, a: float, b: float,
             angles: np.ndarray = _FULL) -> np.ndarray:
  """Points of an ellipse with semi-axis `a` along unit `axis` and `b` across it."""
  v = np.array([-axis[1], axis[0]])
  return centre + a * np.cos(angles)[:, None] * axis + b * np.sin(angles)[:, None] * v


def _side_band(p: np.ndarray, q: np.ndarray, near: float, far: float) -> np.ndarray:
  """Rectangle along the segment p-q between offsets `near` and `far` across it.

  Offsets are along n = (-d_y, d_x) for d = q - p (for a segment pointing down the image,
  +n points to the image's left); negative offsets lie on the other side of the axis.
  """
  d = q - p
  n = np.array([-d[1], d[0]]) / max(math.hypot(d[0], d[1]), 1e-6)
  return np.array([p + near * n, q + near * n, q + far * n, p + far * n])


def _xy(points: np.ndarray) -> list[float]:
  """Flat vertex list for ImageDraw, rounded to the nearest pixel.

  PIL truncates float vertices, which would shift every shape by half a pixel; rounded,
  shapes stay centred on their coordinates with pixel centres at integers.
  """
  return np.rint(points).ravel().tolist()


def _sign(rng: np.random.Generator) -> float:
  """+1 or -1 with equal probability."""
  return 1.0 if rng.random() < 0.5 else -1.0


def _pick(rng: np.random.Generator, options, probs=None):
  """One of `options`, with probabilities `probs` (uniform when None)."""
  u = rng.random()
  if probs is None:
    return options[int(u * len(options))]
  for option, prob in zip(options, probs):
    u -= prob
    if u < 0:
      return option
  return options[-1]


def _rotation(angle: float) -> np.ndarray:
  """2x2 matrix rotating by `angle` radians (clockwise on screen, as y points down)."""
  c, s = np.cos(angle), np.sin(angle)
  return np.array([[c, -s], [s, c]])


# ----------------------------------------------------------------------------------------
# The person.

_GARMENTS = ("shirt", "pants", "skin", "shoes", "hair", "outline", "face", "mark_edge",
             "mark_core")


@functools.lru_cache(maxsize=None)
def _garment_lut(short_sleeves: bool, shorts: bool) -> np.ndarray:
  """[256] label -> 1 + index of the garment (fill) that colours it; 0 for other labels."""
  wear = {"torso": "shirt", "neck": "skin", "head": "skin",
          "upper_arm": "shirt", "forearm": "skin" if short_sleeves else "shirt",
          "hand": "skin", "thigh": "pants", "shin": "skin" if shorts else "pants",
          "foot": "shoes"}
  layers = {_OUTLINE: "outline", _MARK_EDGE: "mark_edge", _MARK_CORE: "mark_core",
            _HAIR: "hair", _FACE: "face"}
  lut = np.zeros(256, np.uint8)
  for name in _PARTS:
    pid = _PART_ID[name]
    lut[pid] = _GARMENTS.index(wear[name.split("_", 1)[-1]]) + 1
    for layer, garment in layers.items():
      lut[pid + _LAYER * layer] = _GARMENTS.index(garment) + 1
  lut.setflags(write=False)
  return lut


# Labels of the person in the label map (before occluders are drawn).
_PERSON_MASK_LUT = [0] + [255] * 255


@dataclasses.dataclass
class _Person:
  """A sampled person in body units (pelvis-to-thorax length 1), before placement."""

  joints: np.ndarray  # [16, 2]
  # (fill label, outline label or 0, polygon [N, 2]) in drawing order (far parts first).
  shapes: list[tuple[int, int, np.ndarray]]
  garments: np.ndarray  # [256] label -> 1 + index into _GARMENTS (0: not the person)
  head: tuple[np.ndarray, np.ndarray, float, float]  # centre, axis (neck->top), a, b
  back_view: bool
  yaw: float


def _sample_person(rng: np.random.Generator) -> _Person:
  """Samples pose, body proportions, clothing and depth order of one person."""
  deg = np.deg2rad
  back_view = bool(rng.random() < BACK_VIEW_PROB)
  yaw = float(rng.uniform(-deg(55), deg(55)))
  width = np.cos(yaw)  # Turning the body narrows shoulders and hips.
  near = 1 if yaw > 0 else -1  # Side (+1 left, -1 right) turned towards the camera.
  turned = abs(yaw) > deg(30)

  # Bone lengths in units of the pelvis-thorax distance, with per-person variation.
  limb = rng.uniform(0.92, 1.08)

  def jitter():
    return rng.uniform(0.95, 1.05)

  upper_arm, forearm = 0.62 * limb * jitter(), 0.56 * limb * jitter()
  thigh, shin = 0.88 * limb * jitter(), 0.84 * limb * jitter()
  neck_len, head_len = rng.uniform(0.2, 0.27), rng.uniform(0.44, 0.52)
  shoulder_half = rng.uniform(0.36, 0.44) * width
  hip_half = rng.uniform(0.16, 0.21) * width
  thick = rng.uniform(0.85, 1.15)
  r_arm = 0.12 * thick * rng.uniform(0.9, 1.1)
  r_leg = 0.17 * thick * rng.uniform(0.9, 1.1)

  def foreshorten(prob):
    return rng.uniform(0.55, 1.0) if rng.random() < prob else rng.uniform(0.93, 1.0)

  lean = float(np.clip(rng.normal(0.0, deg(7)), -deg(20), deg(20)))
  down = _dir(lean)
  across = np.array([np.cos(lean), -np.sin(lean)])  # Towards +x, the person's left if front.
  pelvis = np.zeros(2)
  thorax = -down
  neck_angle = lean + np.pi + rng.uniform(-deg(25), deg(25))
  upper_neck = thorax + neck_len * _dir(neck_angle)
  head_axis = _dir(neck_angle + rng.uniform(-deg(20), deg(20)))
  head_top = upper_neck + head_len * head_axis

  j = np.zeros((_SKELETON.num_joints, 2))
  j[_J["pelvis"]], j[_J["thorax"]] = pelvis, thorax
  j[_J["upper_neck"]], j[_J["head_top"]] = upper_neck, head_top
  limbs = {}  # name -> (start, end, r_start, r_end)
  angles = {}
  for s, side in ((-1, "r"), (1, "l")):
    # Arm: abduction from the torso's down direction (negative: across the body).
    mode = rng.random()
    if mode < 0.5:
      abduct = rng.uniform(-deg(30), deg(55))
    elif mode < 0.8:
      abduct = rng.uniform(deg(40), deg(125))
    else:
      abduct = rng.uniform(deg(110), deg(175))
    shoulder = thorax + s * shoulder_half * across + rng.uniform(0.03, 0.14) * down
    a_upper = lean + s * abduct
    elbow = shoulder + upper_arm * foreshorten(0.35) * _dir(a_upper)
    flex = rng.uniform(0.0, deg(150)) * _sign(rng)
    a_fore = a_upper + s * flex
    wrist = elbow + forearm * foreshorten(0.35) * _dir(a_fore)
    # Leg: abduction (negative crosses the other leg), knee flexion seen in projection.
    if rng.random() < 0.65:
      abduct = rng.uniform(-deg(10), deg(28))
      knee_flex = rng.uniform(0.0, deg(25))
    else:
      abduct = rng.uniform(-deg(30), deg(75))
      knee_flex = rng.uniform(0.0, deg(130))
    hip = pelvis + s * hip_half * across
    a_thigh = lean + s * abduct
    knee = hip + thigh * foreshorten(0.25) * _dir(a_thigh)
    a_shin = a_thigh + s * knee_flex * _sign(rng)
    ankle = knee + shin * foreshorten(0.25) * _dir(a_shin)

    for name, point in (("shoulder", shoulder), ("elbow", elbow), ("wrist", wrist),
                        ("hip", hip), ("knee", knee), ("ankle", ankle)):
      j[_J[f"{side}_{name}"]] = point
    limbs[f"{side}_upper_arm"] = (shoulder, elbow, r_arm, 0.8 * r_arm)
    limbs[f"{side}_forearm"] = (elbow, wrist, 0.8 * r_arm, 0.65 * r_arm)
    limbs[f"{side}_thigh"] = (hip, knee, r_leg, 0.75 * r_leg)
    limbs[f"{side}_shin"] = (knee, ankle, 0.75 * r_leg, 0.55 * r_leg)
    angles[side] = (a_fore, a_shin)

  # Polygons per part (body units).
  polys = {}
  for name, (p, q, r0, r1) in limbs.items():
    polys[name] = _capsule(p, q, r0, r1)
  for s, side in ((-1, "r"), (1, "l")):
    a_fore, a_shin = angles[side]
    wrist, ankle = j[_J[f"{side}_wrist"]], j[_J[f"{side}_ankle"]]
    polys[f"{side}_hand"] = _ellipse(wrist + 0.07 * _dir(a_fore), _dir(a_fore),
                                     0.11 * thick, 0.075 * thick)
    toe = ankle + 0.22 * _dir(a_shin + s * rng.uniform(deg(45), deg(90)))
    polys[f"{side}_foot"] = _capsule(ankle, toe, 0.08 * thick, 0.07 * thick)
  side_points = {}
  waist_half = 0.5 * (shoulder_half + hip_half) + 0.06 * width
  for s, side in ((-1, "r"), (1, "l")):
    shoulder, hip = j[_J[f"{side}_shoulder"]], j[_J[f"{side}_hip"]]
    side_points[side] = (shoulder - 0.13 * down + s * 0.03 * across,
                         shoulder + s * 0.9 * r_arm * across + 0.06 * down,
                         thorax + 0.55 * down + s * waist_half * across,
                         hip + s * 0.75 * r_leg * across + 0.05 * down)
  polys["torso"] = np.stack(list(side_points["r"]) + [pelvis + 0.16 * down]
                            + list(side_points["l"])[::-1])
  polys["neck"] = _capsule(thorax, upper_neck, 0.11 * thick, 0.1 * thick)
  head_centre = 0.5 * (upper_neck + head_top)
  head_a, head_b = 0.5 * head_len, 0.5 * head_len * rng.uniform(0.74, 0.84)
  polys["head"] = _ellipse(head_centre, head_axis, head_a, head_b)

  # Decorations: the left-side marking, hair and face.
  extra = {name: [] for name in _PARTS}
  # The band sits on the +n half of the limb *in the image* (see `_side_band`); back views
  # are mirrored when placed, so it is drawn on the -n half of the body-frame limb here.
  mark_side = -1.0 if back_view else 1.0
  for name in MARKED_PARTS:
    p, q, r0, r1 = limbs[name]
    r = mark_side * 0.5 * (r0 + r1)
    a, b = p + 0.12 * (q - p), p + 0.88 * (q - p)
    extra[name].append((_MARK_EDGE, _side_band(a, b, -0.08 * r, 0.8 * r)))
    extra[name].append((_MARK_CORE, _side_band(a, b, 0.14 * r, 0.6 * r)))
  if back_view:
    cap = rng.uniform(deg(110), deg(140))
  else:
    cap = rng.uniform(deg(50), deg(85))
  extra["head"].append((_HAIR, _ellipse(head_centre, head_axis, head_a, head_b,
                                         np.linspace(-cap, cap, 16))))
  if not back_view:
    across_head = np.array([-head_axis[1], head_axis[0]])
    # The face turns away from the side nearer the camera.
    face = head_centre - near * abs(np.sin(yaw)) * 0.12 * head_len * across_head
    for t in (-1, 1):
      eye = face + 0.08 * head_len * head_axis + t * 0.17 * head_len * across_head
      extra["head"].append((_FACE, _ellipse(eye, head_axis, 0.05 * head_len,
                                            0.05 * head_len, _FULL[::3])))
    extra["head"].append((_FACE, _ellipse(face - 0.22 * head_len * head_axis, head_axis,
                                          0.03 * head_len, 0.12 * head_len, _FULL[::2])))

  # Depth: far parts first. Arms in front of or behind the torso, legs under it; when the
  # body is turned, the near side's limbs go over the torso and the far side's under it.
  front_prob = 0.4 if back_view else 0.7
  depth = {"neck": -0.3, "torso": 0.0, "head": 0.1}
  for s, side in ((-1, "r"), (1, "l")):
    if turned:
      arm = 1.0 if s == near else -1.0
      leg = -0.4 if s == near else -0.6
    else:
      arm = 1.0 if rng.random() < front_prob else -1.0
      leg = -0.5 + rng.uniform(-0.1, 0.1)
    arm += 0.1 * s  # Break ties deterministically.
    for k, part in enumerate(("upper_arm", "forearm", "hand")):
      depth[f"{side}_{part}"] = arm + 0.01 * k
    for k, part in enumerate(("thigh", "shin", "foot")):
      depth[f"{side}_{part}"] = leg + 0.01 * k
  shapes = []
  for name in sorted(_PARTS, key=lambda n: depth[n]):
    pid = _PART_ID[name]
    shapes.append((pid, pid + _LAYER * _OUTLINE, polys[name]))
    for layer, poly in extra[name]:
      shapes.append((pid + _LAYER * layer, 0, poly))

  short_sleeves, shorts = rng.random() < 0.35, rng.random() < 0.25
  return _Person(joints=j, shapes=shapes, garments=_garment_lut(short_sleeves, shorts),
                 head=(head_centre, head_axis, head_a, head_b),
                 back_view=back_view, yaw=yaw)


# ----------------------------------------------------------------------------------------
# Colours, textures and clutter.


def _colour(rng: np.random.Generator, lo: int = 25, hi: int = 230) -> tuple[int, int, int]:
  """A random RGB colour with channels in [lo, hi]."""
  return tuple((rng.random(3) * (hi + 1 - lo) + lo).astype(int).tolist())


def _near_colour(rng: np.random.Generator, base, spread: int) -> tuple[int, int, int]:
  """`base` with each channel moved by up to +-spread."""
  return tuple(int(c) for c in np.clip(np.asarray(base) + rng.integers(-spread, spread + 1, 3),
                                        0, 255))


def _texture(rng: np.random.Generator, size: tuple[int, int], unit: float,
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
    kind = _pick(rng, ("solid", "stripes", "noise"), (0.45, 0.3, 0.25))
  first, second = (_colour(rng), _colour(rng)) if colours is None else colours
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


def _fill_polygons(rng: np.random.Generator, image: Image.Image, polygons: list[np.ndarray],
                   unit: float) -> None:
  """Fills the union of `polygons` (pixels) with a random texture, in place."""
  box = _region(polygons, image.size)
  if box is None:
    return
  x0, y0, x1, y1 = box
  mask = Image.new("L", (x1 - x0, y1 - y0), 0)
  draw = ImageDraw.Draw(mask)
  for poly in polygons:
    draw.polygon(_xy(poly - (x0, y0)), fill=255)
  fill = _texture(rng, mask.size, unit)
  image.paste(fill, box if isinstance(fill, tuple) else (x0, y0), mask)


def _background(rng: np.random.Generator, size: tuple[int, int], unit: float) -> Image.Image:
  """Gradient and/or noise base with random shapes and limb-like distractors."""
  width, height = size
  kind = _pick(rng, ("gradient", "noise", "both"))
  if kind in ("gradient", "both"):
    phi = rng.uniform(0, 2 * np.pi)
    t = (np.arange(width, dtype=np.float32)[None, :] * np.cos(phi)
         + np.arange(height, dtype=np.float32)[:, None] * np.sin(phi))
    t -= t.min()
    t *= 255.0 / max(float(t.max()), 1.0)
    image = Image.composite(Image.new("RGB", size, _colour(rng, 0, 255)),
                            Image.new("RGB", size, _colour(rng, 0, 255)),
                            Image.fromarray(t.astype(np.uint8)))
    if kind == "both":
      noise = _texture(rng, size, unit, "noise")
      image = Image.blend(image, noise, float(rng.uniform(0.15, 0.4)))
  else:
    first = _colour(rng, 0, 255)
    image = _texture(rng, size, unit * rng.uniform(1.0, 3.0), "noise",
                     (first, _near_colour(rng, first, 90)))

  draw = ImageDraw.Draw(image)
  for _ in range(rng.integers(3, 9)):
    centre = rng.uniform(0, 1, 2) * size
    half = rng.uniform(0.15, 0.6) * unit
    shape = rng.integers(3)
    fill = _colour(rng, 0, 255)
    outline = _colour(rng, 0, 255) if rng.random() < 0.3 else None
    if shape == 0:
      box = [*(centre - half * rng.uniform(0.5, 1.5, 2)), *(centre + half * rng.uniform(0.5, 1.5, 2))]
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
      q = p + rng.uniform(0.5, 0.9) * unit * _dir(angle)
      chain.append(_capsule(p, q, radius, 0.8 * radius))
      p, angle, radius = q, angle + rng.uniform(-1.8, 1.8), 0.8 * radius
    _fill_polygons(rng, image, chain, unit)
  return image


def _occluder_polygon(rng: np.random.Generator, centre: np.ndarray,
                      half: float) -> np.ndarray:
  """A random rectangle, ellipse or blob around `centre`."""
  shape = rng.integers(3)
  axis = _dir(rng.uniform(0, 2 * np.pi))
  aspect = rng.uniform(0.4, 1.0)
  if shape == 0:
    v = np.array([-axis[1], axis[0]])
    corners = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]], np.float64)
    return centre + half * (corners[:, :1] * axis + aspect * corners[:, 1:] * v)
  if shape == 1:
    return _ellipse(centre, axis, half, aspect * half)
  n = int(rng.integers(5, 9))
  angles = np.sort(rng.uniform(0, 2 * np.pi, n))
  radii = half * rng.uniform(0.6, 1.2, n)
  return centre + radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], -1)


# ----------------------------------------------------------------------------------------
# The example.


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
    pid = _PART_ID[part]
    labels = self.label_map[self.label_map != _OCCLUDER_LABEL]
    if layers is None:
      return int(np.sum((labels % _LAYER) == pid))
    return int(sum(np.sum(labels == pid + _LAYER * layer) for layer in layers))


LAYERS = {"base": _BASE, "outline": _OUTLINE, "mark_edge": _MARK_EDGE,
          "mark_core": _MARK_CORE, "hair": _HAIR, "face": _FACE}


def render(seed: int, index: int) -> tuple[dict[str, np.ndarray], RenderInfo]:
  """Renders example `index` of the stream `seed`; returns the features and internals."""
  rng = np.random.default_rng([seed, index])
  person = _sample_person(rng)

  # Placement: mirror for back views, rotate, scale so that the person's box (with 25%
  # margin) has side ~ the short image side, centre with jitter (or push to a border).
  rotation = rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)
  linear = _rotation(np.deg2rad(rotation)) @ np.diag([-1.0 if person.back_view else 1.0, 1.0])
  silhouette = np.concatenate([poly for label, _, poly in person.shapes if label < _LAYER])
  silhouette = silhouette @ linear.T
  lo, hi = silhouette.min(0), silhouette.max(0)
  extent, body_centre = float(np.max(hi - lo)), 0.5 * (lo + hi)
  width, height = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))
  short = min(width, height)
  zoom = rng.uniform(1.05, 1.3) if rng.random() < 0.1 else rng.uniform(0.85, 1.05)
  box = short * zoom
  unit = box / (1.25 * extent)  # Pixels per body unit.
  centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
  centre += np.clip(rng.normal(0.0, 0.04 * short, 2), -0.1 * short, 0.1 * short)
  truncation_mode = bool(rng.random() < TRUNCATION_PROB)
  if truncation_mode:
    angle = rng.uniform(-0.7, 0.7) if rng.random() < 0.5 else rng.uniform(0, 2 * np.pi)
    centre += rng.uniform(0.25, 0.45) * box * _dir(angle)
  # The person's centre stays well inside the image (as MPII's objpos does).
  centre = np.clip(centre, 0.15 * np.array([width, height]), 0.85 * np.array([width, height]))
  linear = unit * linear
  offset = centre - unit * body_centre  # body_centre is in rotated body units.

  def to_pixels(points: np.ndarray) -> np.ndarray:
    return points @ linear.T + offset

  size = (width, height)
  image = _background(rng, size, unit)

  # The person: labels in depth order, then one paste per garment within the person's box.
  polygons = [poly for _, _, poly in person.shapes]
  splits = np.cumsum([len(poly) for poly in polygons])[:-1]
  polygons = np.split(to_pixels(np.concatenate(polygons)), splits)
  label_map = Image.new("L", size, 0)
  draw = ImageDraw.Draw(label_map)
  for (fill, outline, _), poly in zip(person.shapes, polygons):
    draw.polygon(_xy(poly), fill=fill, outline=outline or None)
  person_box = label_map.getbbox()
  fills = {
      "skin": _near_colour(rng, _SKIN_TONES[rng.integers(len(_SKIN_TONES))], 12),
      "shoes": _colour(rng, 10, 120),
      "hair": _near_colour(rng, _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))], 10),
      "outline": _colour(rng, 0, 60),
      "face": _colour(rng, 0, 50),
      "mark_edge": _MARK_EDGE_COLOUR,
      "mark_core": _MARK_CORE_COLOUR,
  }
  if person_box is not None:
    x0, y0, x1, y1 = person_box
    region_size = (x1 - x0, y1 - y0)
    fills["shirt"] = _texture(rng, region_size, unit)
    fills["pants"] = _texture(rng, region_size, unit,
                              _pick(rng, ("solid", "stripes", "noise"), (0.6, 0.15, 0.25)))
    # Solid garments: colour the labels through a palette; then textured ones on top.
    palette = np.zeros((len(_GARMENTS) + 1, 3), np.uint8)
    for g, name in enumerate(_GARMENTS, start=1):
      if isinstance(fills[name], tuple):
        palette[g] = fills[name]
    labels = label_map.crop(person_box).convert("P")
    labels.putpalette(palette[person.garments].ravel().tolist())
    image.paste(labels.convert("RGB"), person_box, labels.point(_PERSON_MASK_LUT, "L"))
    for g, name in enumerate(_GARMENTS, start=1):
      if not isinstance(fills[name], tuple):
        mask = labels.point((255 * (person.garments == g)).tolist(), "L")
        image.paste(fills[name], (x0, y0), mask)

  # Joints, box and head.
  joints = to_pixels(person.joints)
  head_centre, head_axis, head_a, head_b = person.head
  axis = head_axis @ linear.T / unit
  across = np.array([-axis[1], axis[0]])
  head_c = to_pixels(head_centre)
  half = np.sqrt((head_a * unit * axis) ** 2 + (head_b * unit * across) ** 2)
  head_box = np.concatenate([head_c - half, head_c + half])

  # Occluders, drawn over some joints.
  num_occluders = _pick(rng, range(len(OCCLUDER_COUNT_PROBS)), OCCLUDER_COUNT_PROBS)
  for _ in range(num_occluders):
    target = joints[rng.integers(len(joints))] + rng.normal(0.0, 0.12 * unit, 2)
    poly = _occluder_polygon(rng, target, rng.uniform(0.25, 0.55) * unit)
    _fill_polygons(rng, image, [poly], unit)
    draw.polygon(_xy(poly), fill=_OCCLUDER_LABEL)

  # Joint status: outside the image -> not visible; covered by something else -> occluded.
  labels = np.asarray(label_map)
  inside = ((joints[:, 0] >= 0) & (joints[:, 0] <= width - 1)
            & (joints[:, 1] >= 0) & (joints[:, 1] <= height - 1))
  probe = joints.copy()
  top, neck = _J["head_top"], _J["upper_neck"]
  probe[top] += 0.15 * (joints[neck] - joints[top])  # head_top lies on the head's outline.
  px = np.clip(np.round(probe).astype(int), 0, [width - 1, height - 1])
  seen = labels[px[:, 1], px[:, 0]]
  seen_part = np.where(seen == _OCCLUDER_LABEL, 0, seen % _LAYER)
  own = _OWN_PARTS[np.arange(len(joints)), seen_part]
  occluded = inside & ~own

  example = {
      "image": np.asarray(image, dtype=np.uint8),
      "joints": joints.astype(np.float32),
      "visible": inside.astype(np.float32),
      "occluded": occluded.astype(np.float32),
      "center": centre.astype(np.float32),
      "scale": np.float32(box / 200.0),
      "head_box": head_box.astype(np.float32),
      "norm_size": np.float32(0.6 * np.hypot(*(2.0 * half))),
      "id": np.int64(index),
  }
  info = RenderInfo(back_view=person.back_view, rotation_deg=float(rotation),
                    yaw_deg=float(np.rad2deg(person.yaw)), truncation_mode=truncation_mode,
                    num_occluders=num_occluders, label_map=labels)
  return example, info


def render_example(seed: int, index: int) -> dict[str, np.ndarray]:
  """Example `index` of the stream `seed`: the feature dict of `jaxpose.data`."""
  return render(seed, index)[0]


def _encoded_example(seed: int, index: int) -> dict[str, object]:
  """`render_example` with the image JPEG-encoded (what the TFDS builder stores)."""
  example = render_example(seed, index)
  buffer = io.BytesIO()
  Image.fromarray(example["image"]).save(buffer, format="JPEG", quality=JPEG_QUALITY)
  example["image"] = buffer.getvalue()
  return example


# ----------------------------------------------------------------------------------------
# TFDS.

# Splits larger than this are rendered by a pool of worker processes.
_POOL_MIN_EXAMPLES = 512
_POOL_CHUNK = 64


@dataclasses.dataclass(eq=False)
class SyntheticPoseConfig(tfds.core.BuilderConfig):
  """Split sizes of one configuration."""

  num_train: int = 12_000
  num_validation: int = 1_000


class SyntheticPose(tfds.core.GeneratorBasedBuilder,
                    skip_registration=__name__ == "__main__"):
  """Synthetic articulated people with the 16 MPII joints (rendered, no download)."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "1.1.0": "Chiral left-limb band, consistent under horizontal flips."}
  BUILDER_CONFIGS = [
      SyntheticPoseConfig(name="default", description="12000 train, 1000 validation people.",
                          num_train=12_000, num_validation=1_000),
      SyntheticPoseConfig(name="tiny", description="64 train, 32 validation people (tests).",
                          num_train=64, num_validation=32),
  ]
  DEFAULT_CONFIG_NAME = "default"

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=prepare.features(_SKELETON.num_joints),  # The spec every source shares.
        disable_shuffling=True,  # Keep examples in id order.
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download.
    return {
        "train": self._generate_examples(TRAIN_SEED, self.builder_config.num_train),
        "validation": self._generate_examples(VALIDATION_SEED,
                                              self.builder_config.num_validation),
    }

  def _generate_examples(self, seed: int, num: int) -> Iterator[tuple[int, dict]]:
    """Yields (index, example) in index order; renders in worker processes if large."""
    render_one = functools.partial(_encoded_example, seed)
    workers = min(os.cpu_count() or 1, 8)
    if num < _POOL_MIN_EXAMPLES or workers < 2:
      for index in range(num):
        yield index, render_one(index)
      return
    # Not a plain fork: the parent may run JAX and TensorFlow threads (train.py builds the data
    # set on first use), and forking a multithreaded process can deadlock. A fork server
    # starts clean once and forks the workers from there.
    with multiprocessing.get_context("forkserver").Pool(workers) as pool:
      for index, example in enumerate(pool.imap(render_one, range(num), _POOL_CHUNK)):
        yield index, example


def num_examples(split: str, config: str = "default") -> int:
  """Number of people in `split` of `config`, without building anything."""
  for builder_config in SyntheticPose.BUILDER_CONFIGS:
    if builder_config.name == config:
      sizes = {"train": builder_config.num_train,
               "validation": builder_config.num_validation}
      if split not in sizes:
        raise ValueError(f"Unknown split {split!r}; known: {sorted(sizes)}")
      return sizes[split]
  raise ValueError(f"Unknown config {config!r}; known: "
                   f"{[c.name for c in SyntheticPose.BUILDER_CONFIGS]}")


def load(split: str, config: str = "default", data_dir: str | None = None) -> tf.data.Dataset:
  """Returns `split` as a tf.data.Dataset of feature dicts, building it on first use.

  Args:
    split: "train" or "validation" (any TFDS split string, e.g. "train[:10%]").
    config: "default" or "tiny".
    data_dir: TFDS data directory; None means TFDS's default (~/tensorflow_datasets).
  """
  builder = SyntheticPose(config=config, data_dir=data_dir)
  builder.download_and_prepare()
  return builder.as_dataset(split=split, shuffle_files=False)


# ----------------------------------------------------------------------------------------
# Preview and build from the command line.


def preview(split: str = "train", num: int = 16, ncols: int = 4, start: int = 0) -> np.ndarray:
  """A grid of rendered examples with their skeletons and head boxes drawn over them."""
  seed = SPLIT_SEEDS[split]
  images, titles = [], []
  for index in range(start, start + num):
    example, info = render(seed, index)
    images.append(visualize.draw_skeleton(
        example["image"], example["joints"], example["visible"],
        occluded=example["occluded"], head_box=example["head_box"]))
    view = "back" if info.back_view else "front"
    titles.append(f"#{index} {view} rot {info.rotation_deg:+.0f}")
  return visualize.image_grid(images, ncols, titles)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--preview", help="Write a PNG grid of examples to this path.")
  parser.add_argument("--split", default="train", choices=sorted(SPLIT_SEEDS))
  parser.add_argument("--num", type=int, default=16)
  parser.add_argument("--ncols", type=int, default=4)
  parser.add_argument("--start", type=int, default=0, help="First example index.")
  parser.add_argument("--build", metavar="CONFIG", help="Build this config (and time it).")
  parser.add_argument("--data_dir", default=None)
  args = parser.parse_args(argv)
  if args.preview:
    visualize.save_png(preview(args.split, args.num, args.ncols, args.start), args.preview)
    print(f"Wrote {args.preview}")
  if args.build:
    start = time.perf_counter()
    builder = SyntheticPose(config=args.build, data_dir=args.data_dir)
    builder.download_and_prepare()
    print(f"Built synthetic_pose/{args.build} in {builder.data_dir} "
          f"in {time.perf_counter() - start:.1f} s")
  if not (args.preview or args.build):
    parser.print_help()


if __name__ == "__main__":
  main()
