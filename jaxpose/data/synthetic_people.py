"""The synthetic person: a 2-D kinematic model, its pose sampling and its body-part shapes.

`sample_person(rng)` draws one person in body units (pelvis-to-thorax length 1): bone lengths,
joint angles within human limits, the polygons of every body part with the decorations that
make left and right and front and back decidable (see `jaxpose.data.synthetic`), their depth
order and the cut of the clothes. `jaxpose.data.synthetic_render` places and paints it.

Label map: every shape is drawn with label = part id + LAYER x layer (0 is background), so a
pixel tells which part shows there and which layer of it (base, outline, marking, hair, face).
"""

import dataclasses

import numpy as np

from jaxpose import skeletons
from jaxpose.data import synthetic_geometry as geometry

SKELETON = skeletons.MPII
JOINT_INDEX = {name: i for i, name in enumerate(SKELETON.joints)}
BACK_VIEW_PROB = 0.3

PARTS = ("torso", "neck", "head",
         "r_upper_arm", "r_forearm", "r_hand", "l_upper_arm", "l_forearm", "l_hand",
         "r_thigh", "r_shin", "r_foot", "l_thigh", "l_shin", "l_foot")
PART_ID = {name: i + 1 for i, name in enumerate(PARTS)}
LAYER = 32
BASE, OUTLINE, MARK_EDGE, MARK_CORE, HAIR, FACE = range(6)
LAYERS = {"base": BASE, "outline": OUTLINE, "mark_edge": MARK_EDGE,
          "mark_core": MARK_CORE, "hair": HAIR, "face": FACE}
MARKED_PARTS = ("l_upper_arm", "l_forearm", "l_thigh", "l_shin")  # The left-side marking.

_J = JOINT_INDEX
_SIDES = ((-1, "r"), (1, "l"))  # (sign across the body, joint-name prefix), in drawing order.
_deg = np.deg2rad


@dataclasses.dataclass
class Person:
  """A sampled person in body units (pelvis-to-thorax length 1), before placement."""

  joints: np.ndarray  # [16, 2]
  # (fill label, outline label or 0, polygon [N, 2]) in drawing order (far parts first).
  shapes: list[tuple[int, int, np.ndarray]]
  short_sleeves: bool  # Clothing (`synthetic_render.garment_lut`).
  shorts: bool
  head: tuple[np.ndarray, np.ndarray, float, float]  # centre, axis (neck->top), a, b
  back_view: bool
  yaw: float


@dataclasses.dataclass
class _Body:
  """Per-person proportions in body units (bone lengths, half widths, limb radii)."""

  width: float  # cos(yaw): turning the body narrows shoulders and hips.
  upper_arm: float
  forearm: float
  thigh: float
  shin: float
  neck_len: float
  head_len: float
  shoulder_half: float
  hip_half: float
  thick: float
  r_arm: float
  r_leg: float


@dataclasses.dataclass
class _Spine:
  """The trunk's frame and the centre line: pelvis -> thorax -> upper neck -> head top."""

  lean: float
  down: np.ndarray  # Unit vector from thorax to pelvis.
  across: np.ndarray  # Unit vector towards +x, the person's left if front-facing.
  pelvis: np.ndarray
  thorax: np.ndarray
  upper_neck: np.ndarray
  head_axis: np.ndarray  # Unit vector from the upper neck to the head top.
  head_top: np.ndarray


def _jitter(rng: np.random.Generator) -> float:
  return rng.uniform(0.95, 1.05)


def _foreshorten(rng: np.random.Generator, prob: float) -> float:
  """A bone's projected length factor: strongly shortened with probability `prob`."""
  return rng.uniform(0.55, 1.0) if rng.random() < prob else rng.uniform(0.93, 1.0)


def _sample_body(rng: np.random.Generator, yaw: float) -> _Body:
  """Bone lengths in units of the pelvis-thorax distance, with per-person variation."""
  width = np.cos(yaw)
  limb = rng.uniform(0.92, 1.08)
  upper_arm, forearm = 0.62 * limb * _jitter(rng), 0.56 * limb * _jitter(rng)
  thigh, shin = 0.88 * limb * _jitter(rng), 0.84 * limb * _jitter(rng)
  neck_len, head_len = rng.uniform(0.2, 0.27), rng.uniform(0.44, 0.52)
  shoulder_half = rng.uniform(0.36, 0.44) * width
  hip_half = rng.uniform(0.16, 0.21) * width
  thick = rng.uniform(0.85, 1.15)
  r_arm = 0.12 * thick * rng.uniform(0.9, 1.1)
  r_leg = 0.17 * thick * rng.uniform(0.9, 1.1)
  return _Body(width=width, upper_arm=upper_arm, forearm=forearm, thigh=thigh, shin=shin,
               neck_len=neck_len, head_len=head_len, shoulder_half=shoulder_half,
               hip_half=hip_half, thick=thick, r_arm=r_arm, r_leg=r_leg)


def _sample_spine(rng: np.random.Generator, body: _Body) -> _Spine:
  """Trunk lean, neck and head directions."""
  lean = float(np.clip(rng.normal(0.0, _deg(7)), -_deg(20), _deg(20)))
  down = geometry.direction(lean)
  thorax = -down
  neck_angle = lean + np.pi + rng.uniform(-_deg(25), _deg(25))
  upper_neck = thorax + body.neck_len * geometry.direction(neck_angle)
  head_axis = geometry.direction(neck_angle + rng.uniform(-_deg(20), _deg(20)))
  return _Spine(lean=lean, down=down, across=np.array([np.cos(lean), -np.sin(lean)]),
                pelvis=np.zeros(2), thorax=thorax, upper_neck=upper_neck, head_axis=head_axis,
                head_top=upper_neck + body.head_len * head_axis)


def _sample_arm(rng: np.random.Generator, s: int, body: _Body, spine: _Spine):
  """Shoulder, elbow, wrist and the forearm's angle of the arm on side `s` (-1 r, +1 l)."""
  # Abduction from the torso's down direction (negative: across the body).
  mode = rng.random()
  if mode < 0.5:
    abduct = rng.uniform(-_deg(30), _deg(55))
  elif mode < 0.8:
    abduct = rng.uniform(_deg(40), _deg(125))
  else:
    abduct = rng.uniform(_deg(110), _deg(175))
  shoulder = (spine.thorax + s * body.shoulder_half * spine.across
              + rng.uniform(0.03, 0.14) * spine.down)
  a_upper = spine.lean + s * abduct
  elbow = shoulder + body.upper_arm * _foreshorten(rng, 0.35) * geometry.direction(a_upper)
  flex = rng.uniform(0.0, _deg(150)) * geometry.random_sign(rng)
  a_fore = a_upper + s * flex
  wrist = elbow + body.forearm * _foreshorten(rng, 0.35) * geometry.direction(a_fore)
  return shoulder, elbow, wrist, a_fore


def _sample_leg(rng: np.random.Generator, s: int, body: _Body, spine: _Spine):
  """Hip, knee, ankle and the shin's angle of the leg on side `s` (-1 r, +1 l)."""
  # Abduction (negative crosses the other leg), knee flexion seen in projection.
  if rng.random() < 0.65:
    abduct = rng.uniform(-_deg(10), _deg(28))
    knee_flex = rng.uniform(0.0, _deg(25))
  else:
    abduct = rng.uniform(-_deg(30), _deg(75))
    knee_flex = rng.uniform(0.0, _deg(130))
  hip = spine.pelvis + s * body.hip_half * spine.across
  a_thigh = spine.lean + s * abduct
  knee = hip + body.thigh * _foreshorten(rng, 0.25) * geometry.direction(a_thigh)
  a_shin = a_thigh + s * knee_flex * geometry.random_sign(rng)
  ankle = knee + body.shin * _foreshorten(rng, 0.25) * geometry.direction(a_shin)
  return hip, knee, ankle, a_shin


def _sample_limbs(rng: np.random.Generator, body: _Body, spine: _Spine, joints: np.ndarray):
  """Samples arms and legs into `joints` [16, 2]; returns their segments and end angles.

  Returns:
    (limbs {name: (start, end, r_start, r_end)}, angles {side: (forearm, shin angle)}).
  """
  limbs, angles = {}, {}
  for s, side in _SIDES:
    shoulder, elbow, wrist, a_fore = _sample_arm(rng, s, body, spine)
    hip, knee, ankle, a_shin = _sample_leg(rng, s, body, spine)
    for name, point in (("shoulder", shoulder), ("elbow", elbow), ("wrist", wrist),
                        ("hip", hip), ("knee", knee), ("ankle", ankle)):
      joints[_J[f"{side}_{name}"]] = point
    r_arm, r_leg = body.r_arm, body.r_leg
    limbs[f"{side}_upper_arm"] = (shoulder, elbow, r_arm, 0.8 * r_arm)
    limbs[f"{side}_forearm"] = (elbow, wrist, 0.8 * r_arm, 0.65 * r_arm)
    limbs[f"{side}_thigh"] = (hip, knee, r_leg, 0.75 * r_leg)
    limbs[f"{side}_shin"] = (knee, ankle, 0.75 * r_leg, 0.55 * r_leg)
    angles[side] = (a_fore, a_shin)
  return limbs, angles


def _torso_polygon(joints: np.ndarray, body: _Body, spine: _Spine) -> np.ndarray:
  """Shoulders, waist and hips of both sides around the pelvis."""
  down, across = spine.down, spine.across
  side_points = {}
  waist_half = 0.5 * (body.shoulder_half + body.hip_half) + 0.06 * body.width
  for s, side in _SIDES:
    shoulder, hip = joints[_J[f"{side}_shoulder"]], joints[_J[f"{side}_hip"]]
    side_points[side] = (shoulder - 0.13 * down + s * 0.03 * across,
                         shoulder + s * 0.9 * body.r_arm * across + 0.06 * down,
                         spine.thorax + 0.55 * down + s * waist_half * across,
                         hip + s * 0.75 * body.r_leg * across + 0.05 * down)
  return np.stack(list(side_points["r"]) + [spine.pelvis + 0.16 * down]
                  + list(side_points["l"])[::-1])


def _part_polygons(rng: np.random.Generator, joints: np.ndarray, limbs: dict, angles: dict,
                   body: _Body, spine: _Spine):
  """Polygon per body part; returns (polygons {part: [N, 2]}, head (centre, axis, a, b))."""
  thick = body.thick
  polys = {}
  for name, (p, q, r0, r1) in limbs.items():
    polys[name] = geometry.capsule(p, q, r0, r1)
  for s, side in _SIDES:
    a_fore, a_shin = angles[side]
    wrist, ankle = joints[_J[f"{side}_wrist"]], joints[_J[f"{side}_ankle"]]
    polys[f"{side}_hand"] = geometry.ellipse(wrist + 0.07 * geometry.direction(a_fore),
                                             geometry.direction(a_fore),
                                             0.11 * thick, 0.075 * thick)
    toe = ankle + 0.22 * geometry.direction(a_shin + s * rng.uniform(_deg(45), _deg(90)))
    polys[f"{side}_foot"] = geometry.capsule(ankle, toe, 0.08 * thick, 0.07 * thick)
  polys["torso"] = _torso_polygon(joints, body, spine)
  polys["neck"] = geometry.capsule(spine.thorax, spine.upper_neck, 0.11 * thick, 0.1 * thick)
  head_centre = 0.5 * (spine.upper_neck + spine.head_top)
  head_a, head_b = 0.5 * body.head_len, 0.5 * body.head_len * rng.uniform(0.74, 0.84)
  polys["head"] = geometry.ellipse(head_centre, spine.head_axis, head_a, head_b)
  return polys, (head_centre, spine.head_axis, head_a, head_b)


def _decorations(rng: np.random.Generator, limbs: dict, head: tuple, head_len: float,
                 back_view: bool, yaw: float) -> dict[str, list[tuple[int, np.ndarray]]]:
  """The left-side marking, hair and face: {part: [(layer, polygon), ...]}."""
  head_centre, head_axis, head_a, head_b = head
  extra = {name: [] for name in PARTS}
  # The band sits on the +n half of the limb *in the image* (see `side_band`); back views
  # are mirrored when placed, so it is drawn on the -n half of the body-frame limb here.
  mark_side = -1.0 if back_view else 1.0
  for name in MARKED_PARTS:
    p, q, r0, r1 = limbs[name]
    r = mark_side * 0.5 * (r0 + r1)
    a, b = p + 0.12 * (q - p), p + 0.88 * (q - p)
    extra[name].append((MARK_EDGE, geometry.side_band(a, b, -0.08 * r, 0.8 * r)))
    extra[name].append((MARK_CORE, geometry.side_band(a, b, 0.14 * r, 0.6 * r)))
  if back_view:
    cap = rng.uniform(_deg(110), _deg(140))
  else:
    cap = rng.uniform(_deg(50), _deg(85))
  extra["head"].append((HAIR, geometry.ellipse(head_centre, head_axis, head_a, head_b,
                                               np.linspace(-cap, cap, 16))))
  if not back_view:
    near = 1 if yaw > 0 else -1
    across_head = np.array([-head_axis[1], head_axis[0]])
    # The face turns away from the side nearer the camera.
    face = head_centre - near * abs(np.sin(yaw)) * 0.12 * head_len * across_head
    full = geometry.FULL_TURN
    for t in (-1, 1):
      eye = face + 0.08 * head_len * head_axis + t * 0.17 * head_len * across_head
      extra["head"].append((FACE, geometry.ellipse(eye, head_axis, 0.05 * head_len,
                                                   0.05 * head_len, full[::3])))
    extra["head"].append((FACE, geometry.ellipse(face - 0.22 * head_len * head_axis, head_axis,
                                                 0.03 * head_len, 0.12 * head_len, full[::2])))
  return extra


def _depth(rng: np.random.Generator, back_view: bool, yaw: float) -> dict[str, float]:
  """Depth per part (far parts first).

  Arms in front of or behind the torso, legs under it; when the body is turned, the near
  side's limbs go over the torso and the far side's under it.
  """
  near = 1 if yaw > 0 else -1  # Side (+1 left, -1 right) turned towards the camera.
  turned = abs(yaw) > _deg(30)
  front_prob = 0.4 if back_view else 0.7
  depth = {"neck": -0.3, "torso": 0.0, "head": 0.1}
  for s, side in _SIDES:
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
  return depth


def sample_person(rng: np.random.Generator) -> Person:
  """Samples pose, body proportions, clothing and depth order of one person."""
  back_view = bool(rng.random() < BACK_VIEW_PROB)
  yaw = float(rng.uniform(-_deg(55), _deg(55)))
  body = _sample_body(rng, yaw)
  spine = _sample_spine(rng, body)
  joints = np.zeros((SKELETON.num_joints, 2))
  joints[_J["pelvis"]], joints[_J["thorax"]] = spine.pelvis, spine.thorax
  joints[_J["upper_neck"]], joints[_J["head_top"]] = spine.upper_neck, spine.head_top
  limbs, angles = _sample_limbs(rng, body, spine, joints)
  polys, head = _part_polygons(rng, joints, limbs, angles, body, spine)
  extra = _decorations(rng, limbs, head, body.head_len, back_view, yaw)
  depth = _depth(rng, back_view, yaw)
  shapes = []
  for name in sorted(PARTS, key=lambda n: depth[n]):
    pid = PART_ID[name]
    shapes.append((pid, pid + LAYER * OUTLINE, polys[name]))
    for layer, poly in extra[name]:
      shapes.append((pid + LAYER * layer, 0, poly))
  short_sleeves, shorts = rng.random() < 0.35, rng.random() < 0.25
  return Person(joints=joints, shapes=shapes, short_sleeves=short_sleeves, shorts=shorts,
                head=head, back_view=back_view, yaw=yaw)
