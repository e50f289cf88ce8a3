"""Human Pose Estimation with Iterative Error Feedback (Carreira et al., CVPR 2016).

Usage as pure functions:

  model = ief.IEF(num_joints=16)
  variables = model.init(rng, images, mean_pose)            # images [N,224,224,3], pose [K,2]
  iterates = model.apply(variables, images, mean_pose)      # [T, N, 16, 2]: y_1 .. y_T
  eps = model.apply(variables, images, poses, method="correction")   # f(x_t): [N, 16, 2]

Poses are (x, y) normalised to the crop as in DeepPose: x' = (x - (S - 1) / 2) / S.

One network f, shared by every iteration, sees the image concatenated with Gaussian maps of
the current pose's K joints and of a fixed marking point at the crop centre, and outputs a
correction: y_{t+1} = y_t + f(image, g(y_t)), y_0 = the training set's mean pose. The loop is
`nn.scan` with broadcast parameters, so the program does not grow with T.

f is GoogLeNet (Inception v1) in the BVLC layout with a first convolution taking 3 + K + 1
channels, biases on every convolution, LRN (no BatchNorm), no auxiliary heads and one linear
layer from the 1024-d average pool to 2K outputs: 6,059,664 parameters for K = 16, the count of
the released model's main branch (LRN has no parameters, so the count cannot tell whether the
release kept it; BVLC's layout has it).

Chosen where the release differs or is unknown:
- Maps: the release renders 100 exp(-0.001 d^2) - 50 (range -50..50, std 22.4 px at 224 px)
  on RGB-minus-mean pixels in 0..255. Inputs here are [0, 1] pixels minus 0.5, so the maps are
  divided by 255 the same way (range +-0.196) and the std scales with the crop (0.1 of its
  side). Points are not rounded to whole pixels.
- The maps are never rendered: each is low + (high - low) gy(row) gx(column), so the first
  convolution's share of them is two products of the 1-D Gaussians' windows with the kernel
  (`conv_pose_maps`, ~1/3 of the dense FLOPs at 224 px); the image's 3 channels are convolved
  as usual. Same parameters and initial values as the release's layout (maps concatenated to
  the image), the same results to float32 rounding. Measured on a 2-core CPU
  (`python benchmarks/ief_stem.py [--paper]`, 2026-12-03): a correction's value and gradient
  0.69x the rendered layout's time at the quickstart's size, 0.76x at the paper's.
- Output: f returns step_scale * (its linear output) in normalised units; step_scale defaults
  to the paper's bound L = 20 px at 224 px, so a bounded target is at most 1 in network units
  (the release's `mxStepNorm` plays this role; its value is not published).
"""

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpose.models import layers

Dtype = Any

# Inception v1 modules: (name, (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection)).
# A 3x3/2 max pool precedes 4a and 5a.
INCEPTION_V1 = (
    ("3a", (64, 96, 128, 16, 32, 32)),
    ("3b", (128, 128, 192, 32, 96, 64)),
    ("4a", (192, 96, 208, 16, 48, 64)),
    ("4b", (160, 112, 224, 24, 64, 64)),
    ("4c", (128, 128, 256, 24, 64, 64)),
    ("4d", (112, 144, 288, 32, 64, 64)),
    ("4e", (256, 160, 320, 32, 128, 128)),
    ("5a", (256, 160, 320, 32, 128, 128)),
    ("5b", (384, 192, 384, 48, 128, 128)),
)


def _caffe_lrn(x):
  """BVLC GoogLeNet's LRN (local_size 5, alpha 1e-4, beta 0.75, Caffe's k = 1 and alpha / n)."""
  return layers.local_response_norm(x, size=5, k=1.0, alpha=1e-4 / 5, beta=0.75)


def _conv_relu(module: nn.Module, features: int, kernel: int, name: str, train: bool,
               maps: "PoseMaps | None" = None, **kw):
  """conv -> ReLU in `module`'s scope (BVLC), or conv without bias -> BatchNorm -> ReLU with
  `module.batch_norm` (BN-Inception's layer; the BatchNorm is named f"{name}_bn"). With `maps`,
  the convolution sees them as channels after its input's (`MapsConv`)."""
  bn = module.batch_norm
  if maps is not None:
    conv = functools.partial(MapsConv(features, kernel, use_bias=not bn, dtype=module.dtype,
                                      name=name, **kw), maps=maps)
  elif kernel == 1:
    conv = layers.Conv1x1(features, use_bias=not bn, dtype=module.dtype, name=name)
  else:
    conv = layers.Conv(features, kernel, use_bias=not bn, dtype=module.dtype, name=name, **kw)

  def apply(x):
    y = conv(x)
    if bn:
      y = layers.batch_norm(train, module.dtype, name=f"{name}_bn")(y)
    return nn.relu(y)

  return apply


class Inception(nn.Module):
  """Inception v1 module: [N,H,W,C] -> [N,H,W,b1 + b3 + b5 + pool_proj] (ReLU outputs)."""

  widths: tuple[int, ...]  # (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection).
  dtype: Dtype = jnp.float32
  batch_norm: bool = False  # See GoogLeNetRegressor.

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    b1, r3, b3, r5, b5, proj = self.widths
    layer = functools.partial(_conv_relu, self, train=train)
    y1 = layer(b1, 1, "1x1")(x)
    y3 = layer(b3, 3, "3x3", padding=1)(layer(r3, 1, "3x3_reduce")(x))
    y5 = layer(b5, 5, "5x5", padding=2)(layer(r5, 1, "5x5_reduce")(x))
    yp = layers.max_pool(x, 3, 1, ((1, 1), (1, 1)))
    yp = layer(proj, 1, "pool_proj")(yp)
    return jnp.concatenate([y1, y3, y5, yp], axis=-1)


class GoogLeNetRegressor(nn.Module):
  """Inception v1 trunk and one linear head: [N,H,W,C] -> [N, outputs] (float32).

  At 224 px the maps are 112, 56, 28, 14 and 7 px; the 1024-d average pool feeds the head.
  """

  outputs: int
  inception: tuple = INCEPTION_V1  # The Inception modules in order; for small variants.
  width_divisor: int = 1  # Divides every layer's width (1: the paper's); for small variants.
  lrn: bool = True  # BVLC's two LRN layers (after pool1 and after conv2).
  dropout_rate: float = 0.4  # Before the head in training (BVLC); rng "dropout".
  dtype: Dtype = jnp.float32
  # BatchNorm after every convolution, no LRN (as BN-Inception; adds "batch_stats"): not the
  # paper's network, which started from ImageNet weights; an option for training from scratch.
  batch_norm: bool = False

  @nn.compact
  def __call__(self, x, *, train: bool = False, maps: "PoseMaps | None" = None):
    """x: [N,H,W,C]; `maps` (optional): more input channels, after x's, in separable form."""
    width = lambda c: max(1, c // self.width_divisor)  # noqa: E731
    norm = _caffe_lrn if self.lrn and not self.batch_norm else lambda y: y
    layer = functools.partial(_conv_relu, self, train=train)
    x = x.astype(self.dtype)
    x = layer(width(64), 7, "conv1", strides=2, padding=3, maps=maps)(x)
    x = norm(layers.max_pool_ceil(x, 3, 2))
    x = layer(width(64), 1, "conv2_reduce")(x)
    x = layer(width(192), 3, "conv2", padding=1)(x)
    x = layers.max_pool_ceil(norm(x), 3, 2)
    for name, widths in self.inception:
      if name in ("4a", "5a"):
        x = layers.max_pool_ceil(x, 3, 2)
      x = Inception(tuple(width(c) for c in widths), dtype=self.dtype,
                    batch_norm=self.batch_norm, name=f"inception_{name}")(x, train=train)
    x = jnp.mean(x, axis=(1, 2))  # BVLC's 7x7 average pool on the 7x7 map.
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.outputs, dtype=self.dtype, name="fc")(x).astype(jnp.float32)


class PoseMaps(NamedTuple):
  """Gaussian maps kept as their 1-D factors: channel c is low + (high - low) gy[:, :, c] (rows)
  times gx[:, :, c] (columns)."""

  gy: jax.Array  # [N, H, C]
  gx: jax.Array  # [N, W, C]
  low: float
  high: float

  def render(self):
    """The maps themselves: [N, H, W, C]."""
    return self.low + (self.high - self.low) * self.gy[:, :, None, :] * self.gx[:, None, :, :]


def pose_maps(poses, height: int, width: int, sigma: float = 0.1,
              value_range: tuple[float, float] = (-50 / 255, 50 / 255)) -> PoseMaps:
  """Gaussian maps of each joint plus the marking point at the crop centre, K + 1 channels.

  Args:
    poses: [N, K, 2] (x, y) normalised to the crop.
    height, width: map size in pixels.
    sigma: Gaussian std as a fraction of the crop height.
    value_range: (background, peak).
  """
  marked = jnp.concatenate([poses, jnp.zeros_like(poses[:, :1])], axis=1)  # Centre: (0, 0).
  size = jnp.array([width, height], jnp.float32)
  pixels = marked * size + (size - 1) / 2  # [N, K+1, 2]
  two_var = 2 * (sigma * height) ** 2

  def gauss(n, centres):  # [N, K+1] -> [N, n, K+1]
    return jnp.exp(-(jnp.arange(n, dtype=jnp.float32)[None, :, None] - centres[:, None]) ** 2
                   / two_var)

  low, high = value_range
  return PoseMaps(gauss(height, pixels[..., 1]), gauss(width, pixels[..., 0]), low, high)


def render_pose_maps(poses, height: int, width: int, sigma: float = 0.1,
                     value_range: tuple[float, float] = (-50 / 255, 50 / 255)):
  """`pose_maps`, rendered: [N, H, W, K+1]."""
  return pose_maps(poses, height, width, sigma, value_range).render()


def _windows(g, kernel: int, stride: int, padding: int):
  """g [N, n, C] zero-padded -> [N, n_out, kernel, C]: what each output row's taps meet."""
  out = (g.shape[1] + 2 * padding - kernel) // stride + 1
  gp = jnp.pad(g, ((0, 0), (padding, padding), (0, 0)))
  span = stride * (out - 1) + 1
  return jnp.stack([gp[:, i:i + span:stride] for i in range(kernel)], axis=2)


def conv_pose_maps(maps: PoseMaps, kernel, stride: int, padding: int):
  """The convolution of `maps.render()` with kernel [k, k, C, F] (symmetric zero padding),
  without rendering them: [N, H', W', F].

  Channel c of the maps is a sum of two outer products, low * 1(row) 1(column) inside the
  image (the padding is zero) and (high - low) gy(row) gx(column), so each window's sum
  separates: a contraction over the kernel's columns, then one over its rows.
  """
  dtype = kernel.dtype
  n, h, _ = maps.gy.shape
  w = maps.gx.shape[1]
  k, f = kernel.shape[0], kernel.shape[-1]
  # The constant parts of all channels as one more factor pair, its kernel summed over them.
  factors_y = jnp.concatenate([maps.gy, jnp.ones((n, h, 1))], axis=-1).astype(dtype)
  factors_x = jnp.concatenate([maps.gx, jnp.ones((n, w, 1))], axis=-1).astype(dtype)
  kernel = jnp.concatenate([(maps.high - maps.low) * kernel,
                            maps.low * jnp.sum(kernel, axis=2, keepdims=True)], axis=2)
  c = factors_y.shape[-1]  # The maps' channels and the constant part.
  rows = _windows(factors_y, k, stride, padding).reshape(n, -1, k * c)  # [N, H', (i, c)]
  cols = _windows(factors_x, k, stride, padding)  # [N, W', k (j), C]
  wo = cols.shape[1]
  # Over the kernel's columns j, channel by channel, as one product with a block-diagonal
  # kernel [(j, c), (f, i, c')] (c = c'): c times the multiplications of per-channel products,
  # but one large product. A first version with per-channel products (and the constant part
  # as a convolution of its own) took 19.7 ms of the quickstart's CPU step, this one 9.5
  # (profiled, 2026-12-03).
  block = jnp.einsum("ijcf,cd->jcfid", kernel, jnp.eye(c, dtype=dtype)).reshape(k * c, -1)
  per_col = jnp.dot(cols.reshape(n * wo, k * c), block)  # [(N, W'), (f, i, c)]
  per_col = per_col.reshape(n, wo * f, k * c)
  # Over the kernel's rows i and the channels: [N, H', (W', F)], NHWC as it comes.
  y = jax.lax.dot_general(rows, per_col, (((2,), (2,)), ((0,), (0,))))
  return y.reshape(n, -1, wo, f)


class MapsConv(layers.Conv):
  """`layers.Conv` (nn.Conv's parameters, names and initialisers) over x with `maps` as more
  channels after x's, the maps' part in closed form (`conv_pose_maps`)."""

  def __call__(self, x, maps: PoseMaps):
    c = x.shape[-1]
    kernel, bias = self.weights(c + maps.gy.shape[-1])
    y = layers.conv2d(x.astype(self.dtype), kernel[:, :, :c], self.strides, self.padding)
    y = y + conv_pose_maps(maps, kernel[:, :, c:], self.strides, self.padding)
    return layers.add_bias(y, bias)


def bounded_correction(y, y_true, max_step):
  """The target e(y_true, y): the step toward the truth, at most `max_step` long per joint.

  y, y_true: [..., K, 2] in the same units as `max_step`. Returns [..., K, 2]:
  min(max_step, |u|) u / |u| with u = y_true - y (zero where u is zero).
  """
  u = y_true - y
  norm = jnp.sqrt(jnp.maximum(jnp.sum(u * u, axis=-1, keepdims=True), 1e-24))
  return u * jnp.minimum(1.0, max_step / norm)


class IEF(nn.Module):
  """Iterative error feedback: images [N,H,W,3], y0 [K,2] or [N,K,2] -> iterates [T,N,K,2].

  `__call__` returns y_1 .. y_T (y_0 is the input); `correction` applies f once to given poses,
  as Fixed Path Consolidation trains it. Rendered poses carry no gradient.
  """

  num_joints: int
  num_iterations: int = 4  # T at test time, as the release.
  inception: tuple = INCEPTION_V1  # See GoogLeNetRegressor.
  width_divisor: int = 1
  lrn: bool = True
  dropout_rate: float = 0.4
  map_sigma: float = 0.1  # Gaussian std / crop side (the release: 22.4 px at 224 px).
  map_range: tuple[float, float] = (-50 / 255, 50 / 255)  # (background, peak) of the maps.
  step_scale: float = 20 / 224  # Output units, normalised: the paper's L = 20 px at 224 px.
  batch_norm: bool = False  # See GoogLeNetRegressor.
  # Render the maps and concatenate them to the image, as the release does: the same variables
  # and results to rounding, slower (benchmarks/ief_stem.py); for comparisons.
  render_maps: bool = False
  dtype: Dtype = jnp.float32

  def setup(self):
    self.net = GoogLeNetRegressor(2 * self.num_joints, inception=self.inception,
                                  width_divisor=self.width_divisor, lrn=self.lrn,
                                  dropout_rate=self.dropout_rate, batch_norm=self.batch_norm,
                                  dtype=self.dtype)

  def correction(self, images, poses, *, train: bool = False):
    """f: images [N,H,W,3] and poses [N,K,2] -> corrections [N,K,2] (normalised, float32)."""
    n, h, w, _ = images.shape
    maps = pose_maps(jax.lax.stop_gradient(poses), h, w, self.map_sigma, self.map_range)
    if self.render_maps:
      x = jnp.concatenate([images.astype(self.dtype), maps.render().astype(self.dtype)], -1)
      out = self.net(x, train=train)
    else:
      out = self.net(images, train=train, maps=maps)  # As if concatenated to the image.
    return self.step_scale * out.reshape(n, self.num_joints, 2)

  def __call__(self, images, y0, *, train: bool = False, num_iterations: int | None = None):
    steps = self.num_iterations if num_iterations is None else num_iterations
    if steps < 1:
      raise ValueError(f"IEF num_iterations={steps}: need at least 1")
    y0 = jnp.broadcast_to(y0, (images.shape[0], self.num_joints, 2)).astype(jnp.float32)

    def step(module, y, images):
      y = y + module.correction(images, y, train=train)
      return y, y

    # Parameters are shared by every iteration; BatchNorm statistics (with batch_norm) are
    # read by each, and in training updated by each in turn (carried).
    carry = "batch_stats" if train else False
    broadcast = ["params"] if train else ["params", "batch_stats"]
    scan = nn.scan(step, variable_broadcast=broadcast, variable_carry=carry,
                   split_rngs={"params": False, "dropout": True}, in_axes=nn.broadcast,
                   length=steps)
    _, iterates = scan(self, y0, images)
    return iterates


def inception_modules(names) -> tuple:
  """The Inception v1 modules named (("3a", "4a", "5a") or "3a,4a,5a"), in the network's order."""
  if isinstance(names, str):
    names = [n.strip() for n in names.split(",")]
  known = [name for name, _ in INCEPTION_V1]
  unknown = sorted(set(names) - set(known))
  if unknown:
    raise ValueError(f"Unknown Inception modules {unknown}; Inception v1 has {known}.")
  return tuple(m for m in INCEPTION_V1 if m[0] in names)


# Small enough for unit tests: one module per resolution, 1/16 of the widths.
IEFTiny = functools.partial(IEF, width_divisor=16, inception=inception_modules(("3a", "4a", "5a")))
