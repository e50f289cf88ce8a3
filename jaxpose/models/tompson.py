"""Tompson, Jain, LeCun, Bregler: Joint Training of a Convolutional Network and a Graphical Model
for Human Pose Estimation (NIPS 2014).

  model = tompson.Tompson(num_joints=10, spatial_model=True)
  variables = model.init(rng, images)              # images [N, 240, 360, 3]
  variables = {"params": tompson.init_priors(variables["params"],
                                             tompson.displacement_histograms(...))}
  detector, spatial = model.apply(variables, images)   # each [N, 60, 90, 10] float32

Part detector. Three banks see the image at full, 1/2 and 1/4 resolution, each after local
contrast normalisation (LCN). Each bank is 5x5 conv + pool, 5x5 conv + pool, 5x5 conv, 9x9 conv
(128, 128, 128, 512 channels, ReLU). The coarser banks' maps are upsampled to the full bank's
size and added. The "sliding-window fully connected" layers then run as 1x1 convolutions down to
K heat maps at output stride 4 (or 8, a field).

Spatial model (a field). For each joint A, one round of sum-product in log space over the
joints v:  log e'_A = sum_v log( SoftPlus(P_{A|v}) * n(e_v) + SoftPlus(b_{v->A}) ),  where * is
a 2-D convolution with a learned prior kernel, n normalises the detector map and b is a learned
bias. The sum runs over every joint v, A included: the self-prior P_{A|A} (a delta at zero
displacement when initialised from histograms) carries A's own detector map, the unary term.
The model returns the log beliefs log e'_A (the paper's e'_A is their exp) so a spatial softmax
loss can take them as logits; `spatial_log=False` returns e'_A instead.

What the paper leaves open, and what is chosen here (the paper's side as restated by the
project's fact sheet and by a third-party reimplementation, max-andr/joint-cnn-mrf; the authors'
code was never released):
- Input and output size: 320x240 inputs and 90x60 heat maps are quoted, which two 2x pools
  cannot join; 90x60 is a 360x240 input (FLIC's 720x480 frames halved) at stride 4, so the
  FLIC setting is 240x360 (H x W) -> 60x90.
- Pyramid: 2x2 average pooling between banks (ceil-rounded for odd sizes).
- LCN (the paper names it, not its window): a 9x9 Gaussian window (sigma 2 px) over all
  channels, subtractive then divisive normalisation as Jarrett et al. (2009), dividing by
  max(local std, the image's mean local std); the window is renormalised at the borders.
- Padding "same" everywhere; pools are 2x2/2 max pools with ceil rounding; the coarser banks are
  upsampled by nearest-neighbour repetition (each coarse pixel covers exactly its fine pixels
  under the codec's pixel alignment) and cropped to the full bank's size; the sum is not
  averaged. Output stride 8 adds a third 2x2 pool after each bank's third conv.
- 1x1 layers: 512 -> 256 -> 256 (ReLU) -> K (linear); the paper's widths were not verified.
- Detector map normalisation n: "softmax" over the map (default: messages are then mixtures of
  the priors, well scaled for the log) or "relu" (the paper's ReLU(e_v)).
- Prior kernels of (2h-1) x (2w-1) for an h x w map: exactly every displacement the map can
  hold (large kernels, about twice the map). One scalar bias per pair, SoftPlus(b) starting at
  1e-5. Without histograms the self-priors start as deltas and the others as uniform maps.
- Convolution by FFT, measured on this repository's shared 2-core CPU at the FLIC setting
  (K = 10, 60x90 maps, 119x179 kernels): one image's forward pass takes 0.06 s by FFT and 18-23 s
  by lax.conv (grouped, direct); by FFT, forward and backward for 4 images take 0.8 s.
  `spatial_method="conv"` keeps the direct form; the tests check that both agree. float32 FFT
  round-off is about 1e-7 of a map's largest message, so it only shows (as up to ~1% in the
  belief) where a message is down near its bias.

Parameters, FLIC setting (K = 10, 240x360 input): detector 3 x 6,138,112 (banks) + 199,690
(1x1 layers) = 18,614,026; spatial model 10 x 10 x (119 x 179 + 1) = 2,130,200; total
**20,744,226** (`paper_parameter_count`).
"""

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpose.models import layers

Dtype = Any


def local_contrast_normalise(x, size: int = 9, sigma: float = 2.0, eps: float = 1e-4):
  """Jarrett et al.'s LCN over a Gaussian window on all channels: [N,H,W,C] -> [N,H,W,C]."""
  t = np.arange(size) - (size - 1) / 2
  g = np.exp(-t**2 / (2 * sigma**2))
  window = jnp.asarray(np.outer(g, g) / np.outer(g, g).sum(), jnp.float32)[:, :, None, None]

  def blur(m):  # [N,H,W,1] -> Gaussian-weighted local mean, renormalised at the borders.
    conv = functools.partial(jax.lax.conv_general_dilated, window_strides=(1, 1),
                             padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return conv(m, window) / conv(jnp.ones_like(m[:1]), window)

  x = x.astype(jnp.float32)
  centred = x - blur(jnp.mean(x, axis=-1, keepdims=True))
  std = jnp.sqrt(blur(jnp.mean(jnp.square(centred), axis=-1, keepdims=True)))
  floor = jnp.maximum(jnp.mean(std, axis=(1, 2), keepdims=True), eps)
  return centred / jnp.maximum(std, floor)


class Bank(nn.Module):
  """One resolution bank: [N,H,W,C] -> [N,ceil(H/s),ceil(W/s),features[-1]], s = 4 or 8."""

  features: Sequence[int] = (128, 128, 128, 512)
  kernels: Sequence[int] = (5, 5, 5, 9)
  pools: Sequence[bool] = (True, True, False, False)  # A 2x2/2 max pool after each conv?
  dtype: Dtype = jnp.float32
  batch_norm: bool = False  # See Tompson.batch_norm.

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    for i, (f, k, pool) in enumerate(zip(self.features, self.kernels, self.pools)):
      x = layers.Conv(f, k, padding=k // 2, use_bias=not self.batch_norm, dtype=self.dtype,
                      name=f"conv{i + 1}")(x)
      if self.batch_norm:
        x = layers.batch_norm(train, self.dtype, name=f"bn{i + 1}")(x)
      x = nn.relu(x)
      if pool:
        x = layers.max_pool_ceil(x, 2, 2)
    return x


class PartDetector(nn.Module):
  """Images [N,H,W,3] -> heat-map logits [N,ceil(H/s),ceil(W/s),num_joints] float32."""

  num_joints: int
  bank_features: Sequence[int] = (128, 128, 128, 512)
  bank_kernels: Sequence[int] = (5, 5, 5, 9)
  head_features: Sequence[int] = (256, 256)
  output_stride: int = 4
  num_banks: int = 3
  lcn_size: int = 9
  lcn_sigma: float = 2.0
  dtype: Dtype = jnp.float32
  batch_norm: bool = False  # See Tompson.batch_norm.

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    if self.output_stride not in (4, 8):
      raise ValueError(f"Tompson: output_stride {self.output_stride} must be 4 or 8")
    pools = (True, True, self.output_stride == 8, False)
    x, merged = images.astype(jnp.float32), None
    for i in range(self.num_banks):
      if i:
        x = layers.avg_pool_ceil(x, 2, 2)
      y = local_contrast_normalise(x, self.lcn_size, self.lcn_sigma).astype(self.dtype)
      y = Bank(self.bank_features, self.bank_kernels, pools, self.dtype, self.batch_norm,
               name=f"bank{i}")(y, train=train)
      if merged is None:
        merged = y
      else:
        y = layers.upsample_nearest(y, 2**i)
        merged = merged + y[:, :merged.shape[1], :merged.shape[2]]
    x = merged
    for i, f in enumerate(self.head_features):
      x = layers.Conv1x1(f, use_bias=not self.batch_norm, dtype=self.dtype, name=f"fc{i + 1}")(x)
      if self.batch_norm:
        x = layers.batch_norm(train, self.dtype, name=f"fc{i + 1}_bn")(x)
      x = nn.relu(x)
    return layers.Conv1x1(self.num_joints, dtype=self.dtype, name="out")(x).astype(jnp.float32)


def _softplus_inverse(y):
  """log(exp(y) - 1), stable for small and large y > 0."""
  y = jnp.asarray(y, jnp.float32)
  return y + jnp.log(-jnp.expm1(-y))


def priors_from_histograms(histograms, floor: float = 1e-6):
  """Prior parameters whose SoftPlus is the histograms (floored): same shape, float32."""
  return _softplus_inverse(jnp.maximum(jnp.asarray(histograms, jnp.float32), floor))


def default_priors(key, shape, dtype=jnp.float32):
  """Priors [K,K,kh,kw] with no data: deltas at zero displacement for A|A, uniform otherwise."""
  del key, dtype
  k, _, kh, kw = shape
  uniform = jnp.full(shape, 1.0 / (kh * kw))
  delta = jnp.zeros((kh, kw)).at[kh // 2, kw // 2].set(1.0)
  eye = jnp.eye(k)[:, :, None, None]
  return priors_from_histograms(eye * delta + (1 - eye) * uniform)


def pairwise_convolve(maps, kernels, method: str = "fft"):
  """Every joint's map convolved with every prior: out[n,y,x,a,v] = sum_d kernels[a,v,d] *
  maps[n, (y,x) - d], d = (dy,dx) in [-(h-1), h-1] x [-(w-1), w-1] at index d + (h-1, w-1).

  Args:
    maps: [N,h,w,K] float32.
    kernels: [K,K,2h-1,2w-1] (A, v, dy, dx).
    method: "fft" (circular convolution on a (2h, 2w) grid, which holds every displacement
      without wrapping into the kept window) or "conv" (lax.conv, grouped by v).

  Returns:
    [N,h,w,K,K] (A, v).
  """
  n, h, w, k = maps.shape
  if kernels.shape != (k, k, 2 * h - 1, 2 * w - 1):
    raise ValueError(f"Tompson: prior kernels {kernels.shape} do not fit maps {maps.shape}; "
                     f"expected {(k, k, 2 * h - 1, 2 * w - 1)}")
  if method == "fft":
    spec = jnp.fft.rfft2(jnp.moveaxis(maps, -1, 1), s=(2 * h, 2 * w))  # [N,v,2h,w+1]
    full = jnp.fft.irfft2(spec[:, None] * jnp.fft.rfft2(kernels, s=(2 * h, 2 * w))[None],
                          s=(2 * h, 2 * w))  # [N,A,v,2h,2w]
    return jnp.transpose(full[..., h - 1:2 * h - 1, w - 1:2 * w - 1], (0, 3, 4, 1, 2))
  if method == "conv":
    # Correlation with the flipped kernel; output channel v*K + A for input group v.
    rhs = jnp.transpose(kernels[:, :, ::-1, ::-1], (2, 3, 1, 0)).reshape(
        2 * h - 1, 2 * w - 1, 1, k * k)
    out = jax.lax.conv_general_dilated(
        maps, rhs, (1, 1), [(h - 1, h - 1), (w - 1, w - 1)],
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=k,
        precision=jax.lax.Precision.HIGHEST)
    return jnp.swapaxes(out.reshape(n, h, w, k, k), -1, -2)
  raise ValueError(f"Tompson: spatial_method {method!r} must be 'fft' or 'conv'")


class SpatialModel(nn.Module):
  """Detector logits [N,h,w,K] -> log beliefs (or beliefs) [N,h,w,K] float32.

  Parameters: priors [K,K,2h-1,2w-1] (A, v, dy, dx) and bias [K,K] (A, v), both through
  SoftPlus; the priors' shape follows the map size seen at initialisation.
  """

  normalise: str = "softmax"  # "softmax" over the map, or "relu" (the paper's ReLU(e_v)).
  method: str = "fft"  # "fft" (measured faster on CPU) or "conv".
  bias_init_value: float = 1e-5  # SoftPlus(b) at initialisation.
  log_output: bool = True  # Return log beliefs (logits for a spatial softmax).
  priors_init: Callable[..., jax.Array] = default_priors

  @nn.compact
  def __call__(self, maps):
    n, h, w, k = maps.shape
    priors = self.param("priors", self.priors_init, (k, k, 2 * h - 1, 2 * w - 1))
    bias = self.param("bias", nn.initializers.constant(_softplus_inverse(self.bias_init_value)),
                      (k, k))
    maps = maps.astype(jnp.float32)
    if self.normalise == "softmax":
      e = jax.nn.softmax(maps.reshape(n, h * w, k), axis=1).reshape(n, h, w, k)
    elif self.normalise == "relu":
      e = nn.relu(maps)
    else:
      raise ValueError(f"Tompson: spatial normalise {self.normalise!r} must be 'softmax' or "
                       "'relu'")
    messages = pairwise_convolve(e, nn.softplus(priors), self.method)  # [N,h,w,A,v]
    # FFT round-off can dip below zero where the true product is 0.
    messages = jnp.maximum(messages, 0.0) + nn.softplus(bias)
    log_beliefs = jnp.sum(jnp.log(messages), axis=-1)
    return log_beliefs if self.log_output else jnp.exp(log_beliefs)


class Tompson(nn.Module):
  """Images [N,H,W,3] -> (detector maps,) or (detector maps, spatial-model maps), each
  [N,ceil(H/s),ceil(W/s),num_joints] float32, s = output_stride.

  Parameters sit under "detector" and "spatial" (for per-phase optimisers).
  """

  num_joints: int = 10
  bank_features: Sequence[int] = (128, 128, 128, 512)  # Each bank's convolutions.
  bank_kernels: Sequence[int] = (5, 5, 5, 9)
  head_features: Sequence[int] = (256, 256)  # Hidden 1x1 ("sliding-window FC") layers.
  output_stride: int = 4  # 4 (the paper) or 8 (a third pool in every bank).
  num_banks: int = 3  # Full, 1/2, 1/4 resolution.
  lcn_size: int = 9  # LCN Gaussian window side, pixels of each bank's input.
  lcn_sigma: float = 2.0
  spatial_model: bool = False  # Add the spatial model (its output is the second map).
  spatial_normalise: str = "softmax"  # Detector map -> spatial model: "softmax" or "relu".
  spatial_method: str = "fft"  # "fft" or "conv".
  spatial_log: bool = True  # Spatial output as log beliefs (True) or beliefs.
  dtype: Dtype = jnp.float32  # Detector computation dtype; parameters stay float32.
  # BatchNorm after every detector convolution (adds "batch_stats"; the paper predates it): an
  # option for short CPU runs from scratch. Without it there is no dropout or BatchNorm, and
  # training and evaluation compute the same function.
  batch_norm: bool = False

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    maps = PartDetector(self.num_joints, self.bank_features, self.bank_kernels,
                        self.head_features, self.output_stride, self.num_banks, self.lcn_size,
                        self.lcn_sigma, self.dtype, self.batch_norm,
                        name="detector")(images, train=train)
    if not self.spatial_model:
      return (maps,)
    spatial = SpatialModel(self.spatial_normalise, self.spatial_method,
                           log_output=self.spatial_log, name="spatial")(maps)
    return maps, spatial


# The paper's FLIC setting: 240x360 inputs, 60x90 maps, detector then spatial model.
TompsonFlic = functools.partial(Tompson, num_joints=10, spatial_model=True)
# Small enough for unit tests (inputs of 32x32 and up).
TompsonTiny = functools.partial(Tompson, bank_features=(8, 8, 8, 16), bank_kernels=(3, 3, 3, 3),
                                head_features=(16,), lcn_size=5, lcn_sigma=1.0)


def paper_parameter_count(num_joints: int, map_size: tuple[int, int],
                          bank_features=(128, 128, 128, 512), bank_kernels=(5, 5, 5, 9),
                          head_features=(256, 256), num_banks: int = 3) -> int:
  """Closed-form parameter count of `Tompson(spatial_model=True)` with h x w heat maps."""
  bank, c = 0, 3
  for f, k in zip(bank_features, bank_kernels):
    bank, c = bank + k * k * c * f + f, f
  head = 0
  for f in tuple(head_features) + (num_joints,):
    head, c = head + c * f + f, f
  h, w = map_size
  spatial = num_joints**2 * ((2 * h - 1) * (2 * w - 1) + 1)
  return num_banks * bank + head + spatial


def displacement_histograms(joints, visible, map_size: tuple[int, int], stride: float):
  """Empirical pairwise priors: where joint A lies relative to joint v, in heat-map pixels.

  Args:
    joints: [N,K,2] (x, y) in input pixels.
    visible: [N,K], nonzero where annotated.
    map_size: (h, w) of the heat maps.
    stride: input pixels per heat-map pixel (the codec's alignment: u = (x + 0.5)/s - 0.5).

  Returns:
    [K,K,2h-1,2w-1] float32: histograms[A, v, dy + h-1, dx + w-1] is the fraction of examples
    (both joints visible) with A - v = (dx, dy) after rounding to heat-map pixels. A pair never
    seen together gets a uniform map.
  """
  joints = np.asarray(joints, np.float64)
  visible = np.asarray(visible) != 0
  if joints.ndim != 3 or joints.shape[-1] != 2 or visible.shape != joints.shape[:2]:
    raise ValueError(f"displacement_histograms: joints {joints.shape} must be [N,K,2] and "
                     f"visible {visible.shape} [N,K]")
  n, k, _ = joints.shape
  h, w = map_size
  u = np.rint((joints + 0.5) / stride - 0.5).astype(np.int64)
  d = u[:, :, None, :] - u[:, None, :, :]  # [N,A,v,2] = position of A minus position of v.
  ok = (visible[:, :, None] & visible[:, None, :] & (np.abs(d[..., 0]) < w)
        & (np.abs(d[..., 1]) < h))
  a, v = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
  a, v = np.broadcast_to(a, (n, k, k))[ok], np.broadcast_to(v, (n, k, k))[ok]
  hist = np.zeros((k, k, 2 * h - 1, 2 * w - 1))
  np.add.at(hist, (a, v, d[..., 1][ok] + h - 1, d[..., 0][ok] + w - 1), 1.0)
  total = hist.sum(axis=(2, 3), keepdims=True)
  uniform = np.full_like(hist, 1.0 / ((2 * h - 1) * (2 * w - 1)))
  return np.where(total > 0, hist / np.maximum(total, 1), uniform).astype(np.float32)


def init_priors(params, histograms, floor: float = 1e-6):
  """`params` (with a "spatial" subtree) with the priors set so SoftPlus(priors) = histograms."""
  old = params["spatial"]["priors"]
  if tuple(np.shape(histograms)) != tuple(old.shape):
    raise ValueError(f"init_priors: histograms {np.shape(histograms)} do not match the "
                     f"priors {tuple(old.shape)}")
  spatial = dict(params["spatial"], priors=priors_from_histograms(histograms, floor))
  return dict(params, spatial=spatial)
