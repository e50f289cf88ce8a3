"""Convolutional Pose Machines (Wei, Ramakrishna, Kanade, Sheikh; CVPR 2016).

The released original 6-stage network (`pose_deploy_centerMap.prototxt` of the authors' Caffe
release, the MPI and LSP models; the FLIC model is the same with 4 stages and 9+1 maps):

  model = cpm.CPM6(num_parts=15)                   # 14 LSP-order joints + background
  variables = model.init(rngs, images, centers)    # images [N,368,368,3], centers [N,368,368,1]
  beliefs = model.apply(variables, images, centers, train=True, rngs={"dropout": key})
  # tuple of num_stages x [N, 46, 46, num_parts] float32

Stage 1 has its own image trunk (three 9x9 convolutions, each followed by a 3x3/2 max pool with
Caffe's ceil rounding: 368 -> 184 -> 92 -> 46), a 5x5 conv to 32 channels, a 9x9 conv and two
1x1 convolutions to the belief maps; it never sees the centre map. Stages 2..T share a second
trunk of the same shape, computed once; each adds its own 5x5 conv to 32 channels, concatenates
[image features, previous beliefs, pooled centre map] (the original model's order), and applies
three 11x11 convolutions and two 1x1 convolutions. ReLU follows every convolution except each
stage's last. The centre map (a Gaussian of sigma 21 px at the person's centre, see
`center_map`) is average-pooled 9x9/8 once, dividing each window by its valid pixels as Caffe
does. Initialisation is the release's (Gaussian std 0.01, bias 0). With the release's sizes the
6-stage 14+1-part model has 31,219,866 parameters and the 4-stage FLIC model 21,323,816.

`CPMVGG` is the release's other MPI model (`pose_deploy_resize.prototxt`): a VGG-19 front end
shared by every stage instead of two 9x9 trunks (29,852,058 parameters); the CPU quickstart
(`configs/quickstart.py:cpm`) is a narrow version of it. Both take `batch_norm` and
`init_scheme` options for short runs from scratch, which the releases do not have.
"""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpose.models import layers

Dtype = Any
Initializer = Callable[..., jax.Array]

RELEASE_INIT = nn.initializers.normal(stddev=0.01)  # The release's Gaussian filler; bias 0.
# CPM.init_scheme -> kernel initialiser; "release" uses CPM.kernel_init (RELEASE_INIT).
INIT_SCHEMES = {"release": None, "lecun": nn.initializers.lecun_normal(),
                "he": nn.initializers.he_normal()}


def center_map(size, center_xy, sigma: float = 21.0):
  """The centre map: an unnormalised Gaussian (peak 1) at the person's centre.

  Args:
    size: the map's side, or its (height, width), in input pixels.
    center_xy: [..., 2] centre (x, y) in input pixels (pixel centres at integers).
    sigma: standard deviation in input pixels (the release's 21 at 368x368).

  Returns:
    [..., H, W, 1] float32.
  """
  h, w = (size, size) if isinstance(size, int) else size
  c = jnp.asarray(center_xy, jnp.float32)
  gx = jnp.exp(-jnp.square(jnp.arange(w, dtype=jnp.float32) - c[..., 0:1]) / (2 * sigma**2))
  gy = jnp.exp(-jnp.square(jnp.arange(h, dtype=jnp.float32) - c[..., 1:2]) / (2 * sigma**2))
  return (gy[..., :, None] * gx[..., None, :])[..., None]


def _image_trunk(x, conv_relu, features: int, kernel: int, num_pools: int = 3):
  """Three `kernel`x`kernel` conv+ReLU, the first `num_pools` (the release: all three) each
  followed by a ceil-rounded 3x3/2 max pool.

  `conv_relu` (from `_layer_makers`) builds the layers in the caller's scope: conv1..conv3
  (and bn1..bn3). [N,H,W,C] -> [N,H/s,W/s,features], s = 2**num_pools, for H and W divisible
  by s.
  """
  for i in range(1, 4):
    x = conv_relu(features, kernel, f"conv{i}", f"bn{i}")(x)
    if i <= num_pools:
      x = layers.max_pool_ceil(x, 3, 2)
  return x


def pool_center_map(maps, stride: int = 8):
  """Centre maps [N,H,W,1] -> [N,ceil((H-9)/8)+1,...,1]: Caffe's 9x9/8 average pool, each
  window divided by its valid pixels (368 -> 46; the last row and column average 8 rows or
  columns, not 9). Another `stride` s pools (s+1)x(s+1)/s the same way (H/s rows)."""
  return layers.avg_pool_ceil(maps, stride + 1, stride)


def _conv(features: int, kernel: int, name: str, *, dtype: Dtype, kernel_init: Initializer,
          use_bias: bool = True):
  """A "same"-padded conv (a dense layer over channels when 1x1) in the calling module."""
  if kernel == 1:
    return layers.Conv1x1(features, use_bias=use_bias, dtype=dtype, kernel_init=kernel_init,
                          name=name)
  return layers.Conv(features, kernel, padding=kernel // 2, use_bias=use_bias, dtype=dtype,
                     kernel_init=kernel_init, name=name)


def _layer_makers(module: nn.Module, train: bool, kernel_init: Initializer | None = None):
  """(conv_relu, linear): the layer makers of a CPM module, in its scope.

  `conv_relu(features, kernel, name, norm_name)`: with `module.batch_norm` a convolution without
  bias, then a BatchNorm named `norm_name`, then ReLU; otherwise the release's biased
  convolution and ReLU. `linear(features, name)`: a stage's last layer, a biased 1x1
  convolution without ReLU (also under BatchNorm). `kernel_init` defaults to the module's.
  """
  bn, dtype, init = module.batch_norm, module.dtype, kernel_init or module.kernel_init

  def conv_relu(features: int, kernel: int, name: str, norm_name: str):
    conv = _conv(features, kernel, name, dtype=dtype, kernel_init=init, use_bias=not bn)
    norm = layers.batch_norm(train, dtype, name=norm_name) if bn else (lambda y: y)
    return lambda x: nn.relu(norm(conv(x)))

  def linear(features: int, name: str):
    return _conv(features, 1, name, dtype=dtype, kernel_init=init)

  return conv_relu, linear


def _scheme_init(module: nn.Module) -> Initializer:
  """The kernel initialiser `module.init_scheme` names ("release": `module.kernel_init`)."""
  if module.init_scheme not in INIT_SCHEMES:
    raise ValueError(f"{type(module).__name__}: init_scheme={module.init_scheme!r}; expected "
                     f"one of {list(INIT_SCHEMES)}")
  return INIT_SCHEMES[module.init_scheme] or module.kernel_init


class Stage1(nn.Module):
  """Stage 1 with its own image trunk: images [N,H,W,3] -> beliefs [N,H/8,W/8,num_parts]."""

  num_parts: int
  trunk_features: int
  stage_features: int
  head_features: int
  big_kernel: int
  feature_kernel: int
  dropout_rate: float
  kernel_init: Initializer
  dtype: Dtype = jnp.float32
  num_pools: int = 3
  batch_norm: bool = False

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    conv_relu, linear = _layer_makers(self, train)
    drop = nn.Dropout(self.dropout_rate, deterministic=not train)
    x = _image_trunk(x, conv_relu, self.trunk_features, self.big_kernel, self.num_pools)
    x = conv_relu(self.stage_features, self.feature_kernel, "conv4", "bn4")(x)
    x = drop(conv_relu(self.head_features, self.big_kernel, "conv5", "bn5")(x))
    x = drop(conv_relu(self.head_features, 1, "conv6", "bn6")(x))
    return linear(self.num_parts, "conv7")(x)


class Trunk(nn.Module):
  """The second image trunk, shared by stages 2..T: [N,H,W,3] -> [N,H/8,W/8,features]."""

  features: int
  kernel: int
  kernel_init: Initializer
  dtype: Dtype = jnp.float32
  num_pools: int = 3
  batch_norm: bool = False

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    conv_relu, _ = _layer_makers(self, train)
    return _image_trunk(x, conv_relu, self.features, self.kernel, self.num_pools)


class Stage(nn.Module):
  """Stage t >= 2: (trunk features, previous beliefs, pooled centre map) -> beliefs.

  All inputs [N,h,w,*] at stride 8; output [N,h,w,num_parts].
  """

  num_parts: int
  stage_features: int
  mconv_features: int
  stage_kernel: int
  feature_kernel: int
  kernel_init: Initializer
  dtype: Dtype = jnp.float32
  batch_norm: bool = False

  @nn.compact
  def __call__(self, features, beliefs, center, *, train: bool = False):
    conv_relu, linear = _layer_makers(self, train)
    x = conv_relu(self.stage_features, self.feature_kernel, "conv", "bn")(features)
    x = jnp.concatenate([x, beliefs.astype(x.dtype), center.astype(x.dtype)], axis=-1)
    for i in range(1, 4):
      x = conv_relu(self.mconv_features, self.stage_kernel, f"mconv{i}", f"bn{i}")(x)
    x = conv_relu(self.mconv_features, 1, "mconv4", "bn4")(x)
    return linear(self.num_parts, "mconv5")(x)


class CPM(nn.Module):
  """(images [N,H,W,3], centre maps [N,H,W,1]) -> tuple of `num_stages` belief maps
  [N,H/8,W/8,num_parts] float32 (H/4 with `num_pools=2`). H and W must be divisible by the
  stride (368 in the release)."""

  num_stages: int = 6  # The release: 6 (MPI, LSP), 4 (FLIC).
  num_parts: int = 15  # Belief maps, the background included (K + 1).
  trunk_features: int = 128  # Width of both image trunks.
  stage_features: int = 32  # Each stage's image features (the 5x5 conv before the concat).
  head_features: int = 512  # Stage 1's conv5 / conv6 width.
  mconv_features: int = 128  # Width of stages >= 2 (Mconv1..4).
  big_kernel: int = 9  # Trunk convolutions and stage 1's conv5.
  stage_kernel: int = 11  # Mconv1..3 of stages >= 2.
  feature_kernel: int = 5  # Stage 1's conv4 and each later stage's first conv.
  dropout_rate: float = 0.5  # After stage 1's conv5 and conv6, in training only.
  kernel_init: Initializer = RELEASE_INIT  # Biases start at 0.
  dtype: Dtype = jnp.float32  # Computation dtype; parameters stay float32.
  # Not the release, options for short CPU runs: 2 pools per trunk (stride 4: 32x32 maps at
  # 128 px, nearer the release's 46x46 than stride 8's 16x16), and `init_scheme` "lecun" or
  # "he" instead of `kernel_init` (the release's std 0.01 shrinks the signal ~2x a layer).
  num_pools: int = 3
  init_scheme: str = "release"
  batch_norm: bool = False  # BatchNorm before every ReLU (adds "batch_stats"): CPU runs only.

  @property
  def stride(self) -> int:
    return 2 ** self.num_pools

  @nn.compact
  def __call__(self, images, center_map, *, train: bool = False):
    stride = self.stride
    if center_map.shape[:3] != images.shape[:3] or center_map.shape[3:] != (1,):
      raise ValueError(f"CPM: center_map shape {center_map.shape} must be [N,H,W,1] with the "
                       f"images' N,H,W {images.shape[:3]}")
    if images.shape[1] % stride or images.shape[2] % stride:
      raise ValueError(f"CPM: image size {images.shape[1:3]} must be divisible by {stride}")
    kernel_init = _scheme_init(self)
    x = images.astype(self.dtype)
    center = pool_center_map(center_map.astype(jnp.float32), stride)
    beliefs = Stage1(self.num_parts, self.trunk_features, self.stage_features,
                     self.head_features, self.big_kernel, self.feature_kernel, self.dropout_rate,
                     kernel_init, self.dtype, self.num_pools, self.batch_norm,
                     name="stage1")(x, train=train)
    outputs = [beliefs.astype(jnp.float32)]
    if self.num_stages > 1:
      features = Trunk(self.trunk_features, self.big_kernel, kernel_init, self.dtype,
                       self.num_pools, self.batch_norm, name="trunk2")(x, train=train)
      for t in range(2, self.num_stages + 1):
        beliefs = Stage(self.num_parts, self.stage_features, self.mconv_features,
                        self.stage_kernel, self.feature_kernel, kernel_init, self.dtype,
                        self.batch_norm, name=f"stage{t}")(features, beliefs, center,
                                                           train=train)
        outputs.append(beliefs.astype(jnp.float32))
    return tuple(outputs)


class CPMVGG(nn.Module):
  """The release's VGG variant (`pose_deploy_resize.prototxt`): one shared VGG-19 front end
  (conv1_1 ... conv4_2, 3x3 convolutions, 2x2/2 max pools: 368 -> 46) and conv4_3..4_7_CPM
  feed every stage; stage 1 is two 1x1 convolutions, stages t >= 2 concatenate [previous
  beliefs, image features, pooled centre map] (this model's order, FAMILIES.md G5) and apply
  five 7x7 and two 1x1 convolutions. With the release's widths and 15 maps: 29,852,058
  parameters.

  (images [N,H,W,3], centre maps [N,H,W,1]) -> tuple of `num_stages` belief maps
  [N,H/8,W/8,num_parts] float32; H and W divisible by 8.
  """

  num_stages: int = 6
  num_parts: int = 15
  # VGG blocks, each followed by a 2x2/2 pool except the last: conv1_x, conv2_x, conv3_x, conv4_x.
  vgg_features: tuple = ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512))
  cpm_features: tuple = (256, 256, 256, 256, 128)  # conv4_3_CPM .. conv4_7_CPM.
  head_features: int = 512  # Stage 1's conv5_1_CPM (1x1).
  mconv_features: int = 128  # Stages >= 2: Mconv1..6.
  num_mconv: int = 5  # 7x7 convolutions per stage >= 2.
  stage_kernel: int = 7
  dropout_rate: float = 0.0  # Not in the VGG release; the CPU quickstart may use it.
  kernel_init: Initializer = RELEASE_INIT
  init_scheme: str = "release"  # See CPM.
  batch_norm: bool = False  # See CPM.
  dtype: Dtype = jnp.float32

  @property
  def stride(self) -> int:
    return 2 ** (len(self.vgg_features) - 1)

  @nn.compact
  def __call__(self, images, center_map, *, train: bool = False):
    stride = self.stride
    if images.shape[1] % stride or images.shape[2] % stride:
      raise ValueError(f"CPMVGG: image size {images.shape[1:3]} must be divisible by {stride}")
    if center_map.shape[:3] != images.shape[:3] or center_map.shape[3:] != (1,):
      raise ValueError(f"CPMVGG: center_map shape {center_map.shape} must be [N,H,W,1] with "
                       f"the images' N,H,W {images.shape[:3]}")
    make_conv_relu, linear = _layer_makers(self, train, _scheme_init(self))

    def conv_relu(features: int, kernel: int, name: str):  # The prototxt's names, "_bn" added.
      return make_conv_relu(features, kernel, name, f"{name}_bn")

    x = images.astype(self.dtype)
    for b, widths in enumerate(self.vgg_features, start=1):
      if b > 1:
        x = layers.max_pool2(x)
      for i, f in enumerate(widths, start=1):
        x = conv_relu(f, 3, f"conv{b}_{i}")(x)
    for i, f in enumerate(self.cpm_features, start=3):
      x = conv_relu(f, 3, f"conv4_{i}_CPM")(x)
    features = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    center = pool_center_map(center_map.astype(jnp.float32), stride)
    y = conv_relu(self.head_features, 1, "conv5_1_CPM")(features)
    beliefs = linear(self.num_parts, "conv5_2_CPM")(y)
    outputs = [beliefs.astype(jnp.float32)]
    for t in range(2, self.num_stages + 1):
      y = jnp.concatenate([beliefs.astype(x.dtype), features, center.astype(x.dtype)], -1)
      for i in range(1, self.num_mconv + 1):
        y = conv_relu(self.mconv_features, self.stage_kernel, f"Mconv{i}_stage{t}")(y)
      y = conv_relu(self.mconv_features, 1, f"Mconv{self.num_mconv + 1}_stage{t}")(y)
      beliefs = linear(self.num_parts, f"Mconv{self.num_mconv + 2}_stage{t}")(y)
      outputs.append(beliefs.astype(jnp.float32))
    return tuple(outputs)


CPM6 = functools.partial(CPM, num_stages=6, num_parts=15)
CPMFlic = functools.partial(CPM, num_stages=4, num_parts=10)
# Small enough for unit tests (inputs of 32x32 and up).
CPMTiny = functools.partial(CPM, num_stages=2, trunk_features=8, stage_features=4,
                            head_features=16, mconv_features=8, big_kernel=3, stage_kernel=3,
                            feature_kernel=3)
# The VGG release (pose_deploy_resize): 6 stages, 14 joints + background.
CPMVGG6 = functools.partial(CPMVGG, num_stages=6, num_parts=15)
