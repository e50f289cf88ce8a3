"""DeepPose: Human Pose Estimation via Deep Neural Networks (Toshev & Szegedy, CVPR 2014).

Usage as pure functions:

  net = deeppose.DeepPoseNet(num_joints=14)                 # the paper's 220 x 220 regressor
  variables = net.init(rng, images, train=False)            # images: [N, 220, 220, 3]
  joints = net.apply(variables, images)                     # [N, 14, 2], normalised to the crop

  cascade = deeppose.DeepPoseCascade(14, torso=(9, 2), stage1_size=220)  # LSP: l_shoulder, r_hip
  stages = cascade.apply(variables, images)                 # images [N, 440, 440, 3] (stage 1
                                                            # sees 220); 3 x [N, 14, 2]
  refined = cascade.apply(variables, images, current, 2, method="refine")

Joints are (x, y) normalised to the box of the image they were predicted from: x' = (x - c) / S
with c = (S - 1) / 2 for an S-pixel side and pixel centres at integers, so the box spans
[-0.5, 0.5] (the paper's N(y; b); the Chainer reimplementation divides by w around w // 2).

The regressor follows the paper's layer sizes with the Chainer reimplementation's (mitmul)
choices where the paper is silent: conv1 pads by 1 (220 -> 53 -> 26 -> 13 -> 6 with Caffe's
ceil-rounded pools, so fc6 sees 6 x 6 x 256 = 9216 inputs), ungrouped convolutions, and the
CaffeNet order ReLU -> pool -> LRN (the paper lists LRN before the pool). With K = 14 it has
exactly 58,396,060 parameters.
"""

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpose.models import layers

Dtype = Any


class DeepPoseNet(nn.Module):
  """AlexNet-style regressor: images [N,H,W,C] -> joints [N,num_joints,2] (float32, normalised).

  The flattened conv5 map feeds fc6, so the parameter count depends on H and W (220 in the
  paper). A model trained at one size only runs at that size.
  """

  num_joints: int
  features: Sequence[int] = (96, 256, 384, 384, 256)  # conv1..conv5 widths.
  hidden: int = 4096  # fc6 and fc7 widths.
  dropout_rate: float = 0.6  # After fc6 and fc7 in training (the paper and mitmul); rng "dropout".
  # BatchNorm after every convolution instead of LRN: not the paper, an option for short CPU
  # runs. Adds a "batch_stats" collection.
  batch_norm: bool = False
  dtype: Dtype = jnp.float32  # Computation dtype; parameters stay float32.

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    if len(self.features) != 5:
      raise ValueError(f"DeepPoseNet features={tuple(self.features)}: need 5 conv widths")
    specs = ((11, 4, 1), (5, 1, 2), (3, 1, 1), (3, 1, 1), (3, 1, 1))  # (kernel, stride, pad)
    size = x.shape[1:3]
    x = x.astype(self.dtype)
    for i, (width, (kernel, stride, pad)) in enumerate(zip(self.features, specs), start=1):
      x = layers.Conv(width, kernel, strides=stride, padding=pad,
                      use_bias=not self.batch_norm, dtype=self.dtype, name=f"conv{i}")(x)
      if self.batch_norm:
        x = layers.batch_norm(train, self.dtype, name=f"bn{i}")(x)
      x = nn.relu(x)
      if i in (1, 2, 5):
        x = layers.max_pool_ceil(x, 3, 2)
      if i in (1, 2) and not self.batch_norm:
        x = layers.local_response_norm(x)
    if 0 in x.shape[1:3]:
      raise ValueError(f"DeepPoseNet: a {size[0]}x{size[1]} input is too small (need >= 37 px)")
    x = x.reshape(x.shape[0], -1)
    for name in ("fc6", "fc7"):
      x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name=name)(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(2 * self.num_joints, dtype=self.dtype, name="fc8")(x)
    return x.reshape(x.shape[0], self.num_joints, 2).astype(jnp.float32)


# A regressor small enough for short CPU runs (829,148 parameters for K = 14 at 128 px).
DeepPoseNetSmall = functools.partial(DeepPoseNet, features=(32, 64, 96, 96, 64), hidden=512)
# For unit tests.
DeepPoseNetTiny = functools.partial(DeepPoseNet, features=(8, 16, 16, 16, 16), hidden=32)


def joint_boxes(joints, torso: tuple[int, int], box_factor: float, min_side: float = 0.0):
  """The paper's per-joint boxes b_i = (y_i, sigma diam(y), sigma diam(y)).

  Args:
    joints: [..., K, 2] current estimates, in any units.
    torso: indices of the two opposite torso joints whose distance is the pose diameter.
    box_factor: sigma, the box side as a multiple of the diameter.
    min_side: smallest side, in the units of `joints` (a collapsed pose has diameter 0).

  Returns:
    centers [..., K, 2] (the joints themselves) and sides [..., K] (equal within a pose).
  """
  diam = jnp.linalg.norm(joints[..., torso[0], :] - joints[..., torso[1], :], axis=-1)
  side = jnp.maximum(box_factor * diam, min_side)
  return joints, jnp.broadcast_to(side[..., None], joints.shape[:-1])


def crop_patches(images, centers, sides, patch_size: int):
  """Axis-aligned square patches by bilinear sampling, zero outside the image.

  Point sampling, no anti-aliasing: a patch much wider than P pixels skips image pixels.

  Args:
    images: [N, H, W, C].
    centers: [N, M, 2] patch centres (x, y) in pixels (pixel centres at integers).
    sides: [N, M] patch sides in pixels.
    patch_size: P, the output side in pixels.

  Returns:
    [N, M, P, P, C]: patch pixel j samples the image at centre + ((j + 0.5) / P - 0.5) * side,
    so the patch's own normalised box maps back as x = centre + x' * side.
  """
  crop = functools.partial(_crop_one, size=patch_size)
  per_image = jax.vmap(crop, in_axes=(None, 0, 0))
  return jax.vmap(per_image)(images, centers, sides)


def _crop_one(image, center, side, size: int):
  """One patch: image [H,W,C], center [2], side [] -> [size, size, C]."""
  offsets = ((jnp.arange(size) + 0.5) / size - 0.5) * side
  rows = _bilinear_taps(center[1] + offsets, image.shape[0])
  cols = _bilinear_taps(center[0] + offsets, image.shape[1])
  out = 0.0
  for r, wr in rows:
    for c, wc in cols:
      out = out + (wr[:, None] * wc[None, :])[..., None] * image[r[:, None], c[None, :]]
  return out.astype(image.dtype)


def _bilinear_taps(coords, n: int):
  """Two (index, weight) taps per coordinate along an axis of length n; zero weight outside."""
  lo = jnp.floor(coords)
  frac = coords - lo
  lo = lo.astype(jnp.int32)
  taps = []
  for idx, weight in ((lo, 1.0 - frac), (lo + 1, frac)):
    inside = (idx >= 0) & (idx < n)
    taps.append((jnp.clip(idx, 0, n - 1), jnp.where(inside, weight, 0.0)))
  return taps


def downsample(images, side: int | None):
  """Images [N,H,W,C] -> [N,side,side,C] for stage 1 (None or the same size: unchanged).

  An integer factor averages each f x f block (the area filter, 4x cheaper than the
  anti-aliased linear resize on a CPU); other sizes use the anti-aliased linear resize. Both
  keep the normalised frame: pixel centre x maps to (x + 0.5) / f - 0.5.
  """
  n, h, w, c = images.shape
  if side is None or (h, w) == (side, side):
    return images
  if side > min(h, w):
    raise ValueError(f"DeepPoseCascade stage1_size={side} exceeds the {h}x{w} input: stage 1 "
                     "sees the image at most at its own size (config.input_size).")
  if h % side == 0 and w % side == 0:
    return images.reshape(n, side, h // side, side, w // side, c).mean(axis=(2, 4))
  return jax.image.resize(images, (n, side, side, c), "linear", antialias=True)


def sample_displacements(rng, mean, cov, shape: Sequence[int] = ()):
  """Simulated errors delta ~ N(mean, cov) for training a cascade stage: [*shape, K, 2].

  Args:
    rng: a PRNG key.
    mean: [K, 2] mean error of each joint.
    cov: [K, 2, 2] per-joint covariances (joints independent, as the paper), or [2K, 2K] one
      joint covariance over (x_0, y_0, x_1, y_1, ...). May be singular (eigh, not Cholesky).
    shape: leading sample shape, e.g. (batch,).
  """
  mean = jnp.asarray(mean, jnp.float32)
  cov = jnp.asarray(cov, jnp.float32)
  k = mean.shape[0]
  if mean.shape != (k, 2) or cov.shape not in ((k, 2, 2), (2 * k, 2 * k)):
    raise ValueError(f"sample_displacements: mean {mean.shape} and cov {cov.shape} must be "
                     f"[K,2] and [K,2,2] or [2K,2K]")
  if cov.shape == (k, 2, 2):
    return jax.random.multivariate_normal(rng, mean, cov, (*shape, k), method="eigh")
  flat = jax.random.multivariate_normal(rng, mean.reshape(-1), cov, tuple(shape), method="eigh")
  return flat.reshape(*shape, k, 2)


def _to_pixels(joints, height: int, width: int):
  """Normalised [..., 2] -> pixels: x = x' * W + (W - 1) / 2, likewise y."""
  size = jnp.array([width, height], jnp.float32)
  return joints * size + (size - 1) / 2


class DeepPoseCascade(nn.Module):
  """The paper's cascade: images [N,H,W,C] -> tuple of num_stages x joints [N,K,2] (float32).

  Stage 1 regresses all joints from the whole crop (reduced to stage1_size). Stage s >= 2 (its
  own DeepPoseNet, named f"stage{s}") sees, for each joint i, a patch of side box_factor *
  diam(current pose) around the current estimate, cut from the crop as given, and takes output
  row i as joint i's displacement normalised by that patch's box: y_i^s = y_i^{s-1} + side *
  psi_i(patch_i). Every output is normalised to the full crop. The patch geometry carries no
  gradient: stages train on their own losses.
  """

  num_joints: int
  num_stages: int = 3  # One initial stage plus two refinement stages, as the paper.
  # Indices of two opposite torso joints (e.g. left shoulder and right hip): the pose diameter.
  torso: tuple[int, int] = dataclasses.field(kw_only=True)
  box_factor: float = 1.0  # sigma: patch side / pose diameter (the paper's value is not known).
  # The side stage 1 sees: the paper regresses the first pose from the whole person box at 220
  # px and cuts the refinement patches from the full-resolution image ("subsequent pose
  # regressors see higher resolution images"). Given, larger images are reduced to it for
  # stage 1 (`downsample`) while the patches come from the images as given; None: as given.
  stage1_size: int | None = None
  # Side of the refinement patches; None: stage1_size (or the image's height).
  patch_size: int | None = None
  min_box: float = 0.05  # Smallest patch side as a fraction of the image's shorter side.
  features: Sequence[int] = (96, 256, 384, 384, 256)  # Every stage's DeepPoseNet widths.
  hidden: int = 4096
  dropout_rate: float = 0.6
  batch_norm: bool = False
  dtype: Dtype = jnp.float32

  def setup(self):
    k = self.num_joints
    if (len(self.torso) != 2 or self.torso[0] == self.torso[1]
        or not all(0 <= t < k for t in self.torso)):
      raise ValueError(f"DeepPoseCascade torso={self.torso}: need two distinct joints in [0, {k})")
    if self.num_stages < 1:
      raise ValueError(f"DeepPoseCascade num_stages={self.num_stages}: need at least 1")
    for s in range(1, self.num_stages + 1):
      setattr(self, f"stage{s}", DeepPoseNet(
          k, features=self.features, hidden=self.hidden, dropout_rate=self.dropout_rate,
          batch_norm=self.batch_norm, dtype=self.dtype))

  def __call__(self, images, *, train: bool = False):
    joints = self.first_stage(images, train=train)
    outputs = [joints]
    for s in range(2, self.num_stages + 1):
      joints = self.refine(images, joints, s, train=train)
      outputs.append(joints)
    return tuple(outputs)

  def first_stage(self, images, *, train: bool = False):
    """Stage 1 on images [N,H,W,C] (resized to stage1_size) -> joints [N,K,2] (normalised)."""
    return self.stage1(downsample(images, self.stage1_size), train=train)

  def refine(self, images, joints, stage: int, *, train: bool = False):
    """Stage `stage` >= 2 on current joints [N,K,2] (normalised) -> refined joints [N,K,2].

    To train stage s on simulated predictions, pass current = truth + sample_displacements(...).
    """
    if not 2 <= stage <= self.num_stages:
      raise ValueError(f"DeepPoseCascade.refine stage={stage}: need 2..{self.num_stages}")
    n, h, w, c = images.shape
    k = self.num_joints
    size = self.patch_size or self.stage1_size or h
    pixels = _to_pixels(jax.lax.stop_gradient(joints), h, w)
    centers, sides = joint_boxes(pixels, self.torso, self.box_factor, self.min_box * min(h, w))
    patches = crop_patches(images, centers, sides, size).reshape(n * k, size, size, c)
    out = getattr(self, f"stage{stage}")(patches, train=train).reshape(n, k, k, 2)
    own = out[:, jnp.arange(k), jnp.arange(k)]  # Row i of the prediction from patch i.
    return joints + own * sides[..., None] / jnp.array([w, h], jnp.float32)


# Small enough for unit tests.
DeepPoseCascadeTiny = functools.partial(DeepPoseCascade, features=(8, 16, 16, 16, 16), hidden=32)
