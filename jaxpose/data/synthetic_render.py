"""The steps of a synthetic render: placement, label map, clothes, occluders, joint status.

`jaxpose.data.synthetic_example.render` runs them in this order, each drawing from the example's
random stream: `place` the sampled person (`synthetic_people`) in an image, paint the
background (`synthetic_textures`), draw the person's `label_map` and `paint_person` through
it, draw `occluders`, and read the `joint_status` off the label map.
"""

import dataclasses
import functools

import numpy as np
from PIL import Image, ImageDraw

from jaxpose.data import synthetic_geometry as geometry
from jaxpose.data import synthetic_people
from jaxpose.data import synthetic_textures as textures

MIN_SIDE, MAX_SIDE = 160, 256  # Image sides, pixels (inclusive).
MAX_ROTATION_DEG = 30.0  # Global in-plane rotation of the person, uniform in +-this.
TRUNCATION_PROB = 0.2  # Person pushed towards a border (some joints leave the image).
OCCLUDER_COUNT_PROBS = (0.5, 0.35, 0.15)  # P(0, 1, 2 occluder shapes).
OCCLUDER_LABEL = 255  # Label of occluders in the label map.
MARK_EDGE_COLOUR = (15, 15, 15)
MARK_CORE_COLOUR = (250, 250, 250)

_SKIN_TONES = np.array([(255, 219, 180), (234, 192, 134), (198, 134, 66), (161, 102, 56),
                        (141, 85, 36), (92, 56, 34), (224, 172, 105), (241, 194, 160)])
_HAIR_COLOURS = np.array([(20, 16, 14), (60, 38, 24), (110, 70, 35), (200, 160, 90),
                          (140, 140, 140), (150, 60, 25), (40, 40, 60)])
GARMENTS = ("shirt", "pants", "skin", "shoes", "hair", "outline", "face", "mark_edge",
            "mark_core")
_LAYER, _PART_ID = synthetic_people.LAYER, synthetic_people.PART_ID
# Labels of the person in the label map (before occluders are drawn).
_PERSON_MASK_LUT = [0] + [255] * 255

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
_OWN_PARTS = np.zeros((synthetic_people.SKELETON.num_joints, _LAYER), bool)  # [joint, part id]
for _name, _parts in _JOINT_PARTS.items():
  _OWN_PARTS[synthetic_people.JOINT_INDEX[_name], [_PART_ID[p] for p in _parts]] = True


# ----------------------------------------------------------------------------------------
# The steps of a render.


@dataclasses.dataclass
class Placement:
  """Where the person goes: image size and the map from body units to pixels."""

  width: int
  height: int
  rotation_deg: float
  truncation_mode: bool  # Pushed towards a border.
  unit: float  # Pixels per body unit.
  box: float  # Side of the person's box (hourglass scale x 200), pixels.
  centre: np.ndarray  # [2] the person's centre, pixels.
  linear: np.ndarray  # [2, 2] body units -> pixels (mirror, rotation, zoom) ...
  offset: np.ndarray  # [2] ... plus this.

  @property
  def size(self) -> tuple[int, int]:
    return self.width, self.height

  def to_pixels(self, points: np.ndarray) -> np.ndarray:
    return points @ self.linear.T + self.offset


def place(rng: np.random.Generator, person: synthetic_people.Person) -> Placement:
  """Mirror for back views, rotate, scale so that the person's box (with 25% margin) has side
  ~ the short image side, centre with jitter (or push to a border)."""
  rotation = rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)
  linear = geometry.rotation(np.deg2rad(rotation)) @ np.diag(
      [-1.0 if person.back_view else 1.0, 1.0])
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
    centre += rng.uniform(0.25, 0.45) * box * geometry.direction(angle)
  # The person's centre stays well inside the image (as MPII's objpos does).
  centre = np.clip(centre, 0.15 * np.array([width, height]), 0.85 * np.array([width, height]))
  offset = centre - unit * body_centre  # body_centre is in rotated body units.
  return Placement(width=width, height=height, rotation_deg=float(rotation),
                   truncation_mode=truncation_mode, unit=unit, box=box, centre=centre,
                   linear=unit * linear, offset=offset)


def label_map(person: synthetic_people.Person, placement: Placement) -> Image.Image:
  """The person's labels ("L" image) in depth order: part id + LAYER x layer, 0 elsewhere."""
  polygons = [poly for _, _, poly in person.shapes]
  splits = np.cumsum([len(poly) for poly in polygons])[:-1]
  polygons = np.split(placement.to_pixels(np.concatenate(polygons)), splits)
  labels = Image.new("L", placement.size, 0)
  draw = ImageDraw.Draw(labels)
  for (fill, outline, _), poly in zip(person.shapes, polygons):
    draw.polygon(geometry.vertices(poly), fill=fill, outline=outline or None)
  return labels


@functools.lru_cache(maxsize=None)
def garment_lut(short_sleeves: bool, shorts: bool) -> np.ndarray:
  """[256] label -> 1 + index of the garment (fill) that colours it; 0 for other labels."""
  wear = {"torso": "shirt", "neck": "skin", "head": "skin",
          "upper_arm": "shirt", "forearm": "skin" if short_sleeves else "shirt",
          "hand": "skin", "thigh": "pants", "shin": "skin" if shorts else "pants",
          "foot": "shoes"}
  # Every layer but the base is coloured by the garment of its name.
  layers = {value: name for name, value in synthetic_people.LAYERS.items() if name != "base"}
  lut = np.zeros(256, np.uint8)
  for name in synthetic_people.PARTS:
    pid = _PART_ID[name]
    lut[pid] = GARMENTS.index(wear[name.split("_", 1)[-1]]) + 1
    for layer, garment in layers.items():
      lut[pid + _LAYER * layer] = GARMENTS.index(garment) + 1
  lut.setflags(write=False)
  return lut


def paint_person(rng: np.random.Generator, image: Image.Image, labels: Image.Image,
                 person: synthetic_people.Person, unit: float) -> None:
  """Colours the person's pixels of `image` in place, one paste per garment within its box."""
  garments = garment_lut(person.short_sleeves, person.shorts)
  person_box = labels.getbbox()
  fills = {
      "skin": textures.near_colour(rng, _SKIN_TONES[rng.integers(len(_SKIN_TONES))], 12),
      "shoes": textures.colour(rng, 10, 120),
      "hair": textures.near_colour(rng, _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))], 10),
      "outline": textures.colour(rng, 0, 60),
      "face": textures.colour(rng, 0, 50),
      "mark_edge": MARK_EDGE_COLOUR,
      "mark_core": MARK_CORE_COLOUR,
  }
  if person_box is None:
    return
  x0, y0, x1, y1 = person_box
  region_size = (x1 - x0, y1 - y0)
  fills["shirt"] = textures.texture(rng, region_size, unit)
  fills["pants"] = textures.texture(
      rng, region_size, unit, geometry.pick(rng, ("solid", "stripes", "noise"), (0.6, 0.15, 0.25)))
  # Solid garments: colour the labels through a palette; then textured ones on top.
  palette = np.zeros((len(GARMENTS) + 1, 3), np.uint8)
  for g, name in enumerate(GARMENTS, start=1):
    if isinstance(fills[name], tuple):
      palette[g] = fills[name]
  crop = labels.crop(person_box).convert("P")
  crop.putpalette(palette[garments].ravel().tolist())
  image.paste(crop.convert("RGB"), person_box, crop.point(_PERSON_MASK_LUT, "L"))
  for g, name in enumerate(GARMENTS, start=1):
    if not isinstance(fills[name], tuple):
      mask = crop.point((255 * (garments == g)).tolist(), "L")
      image.paste(fills[name], (x0, y0), mask)


def head_box(person: synthetic_people.Person,
             placement: Placement) -> tuple[np.ndarray, float]:
  """The box (x1, y1, x2, y2) around the head's ellipse in pixels, and 0.6 x its diagonal."""
  head_centre, head_axis, head_a, head_b = person.head
  unit = placement.unit
  axis = head_axis @ placement.linear.T / unit
  across = np.array([-axis[1], axis[0]])
  head_c = placement.to_pixels(head_centre)
  half = np.sqrt((head_a * unit * axis) ** 2 + (head_b * unit * across) ** 2)
  return np.concatenate([head_c - half, head_c + half]), 0.6 * np.hypot(*(2.0 * half))


def occluders(rng: np.random.Generator, image: Image.Image, labels: Image.Image,
              joints: np.ndarray, unit: float) -> int:
  """Draws 0-2 textured shapes over random joints into `image` and `labels`; returns how many."""
  num_occluders = geometry.pick(rng, range(len(OCCLUDER_COUNT_PROBS)), OCCLUDER_COUNT_PROBS)
  draw = ImageDraw.Draw(labels)
  for _ in range(num_occluders):
    target = joints[rng.integers(len(joints))] + rng.normal(0.0, 0.12 * unit, 2)
    poly = textures.occluder_polygon(rng, target, rng.uniform(0.25, 0.55) * unit)
    textures.fill_polygons(rng, image, [poly], unit)
    draw.polygon(geometry.vertices(poly), fill=OCCLUDER_LABEL)
  return num_occluders


def joint_status(labels: np.ndarray, joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(inside [K], occluded [K]) bool: in the image; inside but covered by something else.

  Args:
    labels: [H, W] uint8 label map, occluders included.
    joints: [K, 2] pixels.
  """
  height, width = labels.shape
  inside = ((joints[:, 0] >= 0) & (joints[:, 0] <= width - 1)
            & (joints[:, 1] >= 0) & (joints[:, 1] <= height - 1))
  probe = joints.copy()
  top, neck = synthetic_people.JOINT_INDEX["head_top"], synthetic_people.JOINT_INDEX["upper_neck"]
  probe[top] += 0.15 * (joints[neck] - joints[top])  # head_top lies on the head's outline.
  px = np.clip(np.round(probe).astype(int), 0, [width - 1, height - 1])
  seen = labels[px[:, 1], px[:, 0]]
  seen_part = np.where(seen == OCCLUDER_LABEL, 0, seen % _LAYER)
  own = _OWN_PARTS[np.arange(len(joints)), seen_part]
  return inside, inside & ~own
