"""Blocks shared by several model families.

1x1 convolutions are written as `nn.Dense` over the channel axis: the same parameters and the
same product, but XLA on CPU runs the dot ~3.5x faster than a 1x1 convolution.

Initialisation (`init_scheme` fields): "lecun" is Flax's default (LeCun-normal kernels, zero
biases); "pytorch" is PyTorch's default for `nn.Conv2d` / `nn.Linear` (kaiming_uniform with
a=sqrt(5)), which draws kernels and biases alike from U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
fan_in being input channels x kernel area.
"""

import functools
import math
from typing import Any, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpose import parallel
from jaxpose.models import fft_conv
from jaxpose.models import patches
from jaxpose.models import winograd

Dtype = Any
INIT_SCHEMES = ("pytorch", "lecun")

# PyTorch's kaiming_uniform(a=sqrt(5)): bound sqrt(6 / ((1 + 5) fan_in)) = 1 / sqrt(fan_in),
# i.e. variance 1 / (3 fan_in). Flax computes fan_in of an HWIO kernel as H*W*I, like PyTorch.
torch_kernel_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> nn.initializers.Initializer:
  """PyTorch's default bias initialiser: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1 / fan_in**0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def param(module: nn.Module, name: str, init, shape: tuple[int, ...]):
  """`module.param(name, init, shape, jnp.float32)`. Where the parameter exists (apply), its value
  with its shape checked against `shape`: flax's own check traces the initialiser abstractly,
  for every parameter at every apply (0.18 s of the 2-stack hourglass's 1.4 s train-step trace,
  2026-12-05; 396 parameters)."""
  shape = tuple(shape)
  if not module.has_variable("params", name):
    return module.param(name, init, shape, jnp.float32)
  value = nn.meta.unbox(module.get_variable("params", name))
  if jnp.shape(value) != shape:
    raise flax.errors.ScopeParamShapeError(name, module.scope.path_text, jnp.shape(value), shape)
  return value


def conv_inits(scheme: str, fan_in: int) -> dict[str, Any]:
  """`kernel_init` / `bias_init` keyword arguments of nn.Conv / nn.Dense for `scheme`."""
  if scheme == "pytorch":
    return dict(kernel_init=torch_kernel_init, bias_init=torch_bias_init(fan_in))
  if scheme == "lecun":
    return {}  # Flax's defaults.
  raise ValueError(f"init_scheme={scheme!r}; expected one of {INIT_SCHEMES}.")


# ---------------------------------------------------------------------------------------------
# Gradients XLA's CPU backend computes slowly, written out. Measured at the hourglass's sizes
# (batch 8, 64x64; `python benchmarks/backward.py`), the gradient of a 3x3 convolution with
# respect to its kernel (XLA's backprop-filter convolution) takes ~5x the forward pass, a dense
# layer's kernel gradient waits on a slow fused transpose, and BatchNorm's differentiated
# two-pass statistics take more passes than its closed form. Same parameters, same values.
# The convolution's and the dense layer's written-out gradients were measured on CPUs only: a
# program lowered for a GPU or TPU gets XLA's own gradients there (`on_cpu`, chosen when the
# program is lowered for its platform), as any JAX model would. BatchNorm's closed form is
# fewer passes on any backend and is used everywhere.


def after(x, dy):
  """x, made to depend on dy (x + 0 * dy's first element, which XLA does not fold away): a
  gradient's work on its residual x then waits for the output gradient dy. Without it XLA
  computes such work (BatchNorm's normalised input, a convolution's padded input) in the forward
  pass and keeps the result alive beside x until the backward pass: the 2-stack hourglass's
  training step held 2,314 MiB of temporaries, 1,484 MiB with it (8-stack: 6,683 -> 4,192 MiB;
  batch 8, 256 px), at the same speed (`python benchmarks/step_memory.py`).

  On a batch split over devices (`parallel.device_shares`; x and dy batch-leading), each
  device's share of x waits for the first element of its own share of dy: dy's first element
  lives on one device, and the partitioner sent it to the others in an all-reduce per call
  (with `batch_moments` and `scale_bias_gradients`: the 2-stack's step on two devices 387 ->
  177 all-reduces)."""
  x_shares, dy_shares = parallel.device_shares(x), parallel.device_shares(dy)
  if x_shares is None or dy_shares is None:
    return x + (0 * dy.reshape(-1)[0]).astype(x.dtype)
  first = dy_shares.reshape(len(dy_shares), -1)[:, 0]  # Each device's first element.
  zeros = (0 * first).astype(x.dtype).reshape(-1, *(1,) * x.ndim)
  return (x_shares + zeros).reshape(x.shape)


def on_cpu(cpu_fn, other_fn, *args):
  """cpu_fn(*args) in a program lowered for CPUs, other_fn(*args) for any other platform
  (`jax.lax.platform_dependent`: the choice is made at lowering, which keeps only the lowered
  platform's branch; both must return the same shapes and types)."""
  return jax.lax.platform_dependent(*args, cpu=cpu_fn, default=other_fn)


@jax.custom_vjp
def dense(x, kernel):
  """[..., C] @ [C, F] -> [..., F], with the kernel gradient's operands materialised before
  their product (`lax.optimization_barrier`): without it XLA on CPU fuses the elementwise
  work that produced them into the transpose the product needs, a strided loop that cost more
  than the product itself (`python benchmarks/backward.py`: 0.67-0.84x the time of nn.Dense's
  gradient at the hourglass's sizes). Lowered for other platforms, autodiff's gradient."""
  return jnp.dot(x, kernel)


def _dense_fwd(x, kernel):
  return jnp.dot(x, kernel), (x, kernel)


def _dense_bwd(residuals, dy):
  x, kernel = residuals
  return on_cpu(_dense_bwd_cpu, _dense_bwd_xla, x, kernel, dy)


def _dense_bwd_cpu(x, kernel, dy):
  rows, flat_dy = jax.lax.optimization_barrier(
      (x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])))
  dk = jnp.dot(rows.T, flat_dy, preferred_element_type=jnp.float32)
  return jnp.dot(dy, kernel.T), dk.astype(kernel.dtype)


def _dense_bwd_xla(x, kernel, dy):
  """The gradient autodiff gives `jnp.dot(x, kernel)` (on GPUs and TPUs)."""
  _, vjp = jax.vjp(jnp.dot, x, kernel)
  return vjp(dy)


dense.defvjp(_dense_fwd, _dense_bwd)


class Dense(nn.Module):
  """`nn.Dense`'s parameters (`kernel` [C, features], `bias`), dtype handling and forward
  pass, with `dense`'s gradient."""

  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  kernel_init: Any = nn.linear.default_kernel_init
  bias_init: Any = nn.initializers.zeros

  def __call__(self, x):
    return _apply_dense(self, x)

  @nn.compact
  def weights(self, in_features: int):
    """(kernel [in_features, features], bias or None), in the computation dtype."""
    kernel = param(self, "kernel", self.kernel_init, (in_features, self.features))
    return kernel.astype(self.dtype), _bias(self)


def _bias(module: nn.Module):
  """`module`'s float32 `bias` parameter in its dtype, when it has one (as nn.Dense)."""
  if not module.use_bias:
    return None
  return param(module, "bias", module.bias_init, (module.features,)).astype(
      module.dtype)


def add_bias(y, bias):
  """y + bias, or y for a layer without one (bias None)."""
  return y if bias is None else y + bias


def _apply_dense(module: nn.Module, x):
  """x @ kernel + bias with `module.weights` (Dense's, or Conv1x1's, which are a Dense's)."""
  kernel, bias = module.weights(x.shape[-1])
  return add_bias(dense(x.astype(module.dtype), kernel), bias)


class Conv1x1(nn.Module):
  """A 1x1 convolution as a dense layer over channels: [..., C] -> [..., features]."""

  features: int
  use_bias: bool = True
  init_scheme: str = "lecun"  # "pytorch" or "lecun" (see the module docstring).
  kernel_init: Any = None  # An explicit kernel initialiser (biases 0) instead of the scheme's.
  dtype: Dtype = jnp.float32

  def __call__(self, x):
    return _apply_dense(self, x)

  @nn.compact
  def weights(self, in_features: int):
    """(kernel [in_features, features], bias or None), in the computation dtype."""
    inits = (conv_inits(self.init_scheme, in_features) if self.kernel_init is None
             else dict(kernel_init=self.kernel_init))
    # Parameter named `kernel` of shape (C, features): a 1x1 conv kernel without its 1x1 dims.
    return Dense(self.features, use_bias=self.use_bias, dtype=self.dtype, name="dense",
                 **inits).weights(in_features)


# Below this many input channels, conv2d's kernel gradient is XLA's, or the patches' product
# (PATCHES, below) (measured: on the 7x7 stem's 3 channels, 49 thin products took 1.15x XLA's
# time).
MIN_CHANNELS_FOR_TAPS = 16
# Nor for small layers: below N*H'*W' * Cin * Cout = 2^24 multiply-adds a tap, copying the k*k
# windows costs more than the products gain. `python benchmarks/conv_gradient.py` (value and
# both gradients, taps / XLA's, 2-core Xeon, 2026-12-06, 15 layer shapes of the five families):
# at 2^24 and above 0.64-0.91 (the CPM release's 7x7 stages 0.66, its 9x9 at 184 px 0.69,
# Tompson's banks 0.68-0.77, the hourglass's 3x3 at 64 px 0.64); below, 1.07-1.51 (the
# hourglass's 3x3 at 8 and 4 px, narrow quickstart layers of 32-96 channels on 16-32 px maps).
MIN_WORK_FOR_TAPS = 1 << 24


# Each tap's product as this many products over consecutive blocks of rows, summed: a product
# whose result is only Cin x Cout keeps one of the two cores idle much of the time; two halves
# run side by side. One tap of the hourglass's 3x3 at 64 px (128 -> 128, batch 8) 7.4 against
# 8.6-9.4 ms, CPM's 9x9 at 184 px 15.7 against 19.0 ms (AMD EPYC, 2 cores; 8 parts no faster);
# the steps 0.95-0.97x (2-stack), 0.96x (Tompson's release), 1.00x (CPM's): docs/performance_log.md,
# "Each tap's product in two halves".
TAP_PRODUCT_PARTS = 2


# A 3x3 convolution's kernel gradient at stride 1, padding 1, where the taps would pay, by
# Winograd's F(4x4, 3x3) instead (`jaxpose.models.winograd`): 36 products of [Cin x tiles] by
# [tiles x Cout] where the taps make 9 of [Cin x pixels] by [pixels x Cout], a quarter of the
# multiply-adds, for transforms that cost memory passes. Measured on the AMD EPYC (2 cores,
# 2026-12-07; docs/performance_log.md, "The kernel gradient by Winograd"), the convolution's value
# and both gradients (`python benchmarks/conv_gradient.py`): 136 against the taps' 180 ms at
# 64 px on 128 channels, 144 against 260 ms at 128 px on 64, 34 against 44 ms at 32 px, 9.5
# against 11.2 ms at 16 px; a bottleneck block's gradient 0.72-0.87x, one stack's 0.88-0.93x
# (`python benchmarks/module_pairs.py`). Its input gradient by Winograd too ran faster alone (38
# against XLA's 52 ms at 64 px) but left the block's gradient as it was (1.00x): XLA's.
WINOGRAD = True


# A convolution with an odd kernel of at least FFT_MIN_KERNEL at stride 1 and "same" padding, and at
# least FFT_MIN_WORK multiply-adds a tap (`tap_work`), by the FFT (`jaxpose.models.fft_conv`): its
# value, in training and inference alike, and both gradients. Measured on the AMD EPYC (2 cores,
# batch 8, 2026-12-07; docs/performance_log.md, "Large kernels by the FFT, in training"), both
# gradients against the taps' kernel gradient and XLA's input gradient: CPM's 9x9 at 184 px on 128
# channels 2.74 against 9.33 s, at 92 px 0.72 against 2.34 s, its 11x11 at 46 px 0.45-0.53x, its VGG
# variant's 7x7 0.52-0.56x, its 9x9 from 32 to 512 channels 0.64x (left out, by FFT_MAX_WIDENING
# below) and Tompson's 9x9 bank (128 to 512) 0.45x; the Tompson quickstart's 7x7 on 32 channels
# (2^24 a tap) 0.93x, 5x5 kernels 0.88-3.7x. The value alone: CPM's 9x9 at 184 px 1.37 against XLA's
# 3.6 s, its 11x11 at 46 px 1.5x faster. Not where the output has more than FFT_MAX_WIDENING times
# the input's channels: the kernel's and the output gradient's transforms are then the largest
# buffers. Tompson's 9x9 layers (128 to 512 channels, 4x) are in: its train step 0.60x (14.6 -> 8.7
# s), its training process's peak RSS 1,916 -> 3,014 MB (docs/performance_log.md, "Tompson's
# widening layers by the FFT"; before FFT_GROUPS, 0.70x for 2,102 -> 3,976 MB, and they were left
# out). CPM's 9x9 from 32 to 512 channels (16x) is out: 0.45 s of its ~21 s step, for 420 MiB more
# of the layer's temporaries. FFT_GROUPS: the transforms a few images at a time
# (`fft_conv.image_group`), so that one group's are alive at once (False: the whole batch's). CPM's
# train step (`benchmarks/paired_configs.py --config configs/cpm_mpii.py`; its training process's
# peak RSS one process each): by the FFT over the whole batch, with the value on its 184 and 92 px
# maps only, 0.45x XLA's and the taps' step, its peak RSS 4,710 -> 6,792 MB; in groups, 0.90x that
# step and 5,278 MB; then with the value on its 46 px maps too (their tiles hold 7.7x their pixels,
# which over the whole batch had cost 630 MiB of temporaries), 0.97x, +41 MB. In inference, CPM's
# forward pass 0.41-0.46x XLA's (docs/performance_log.md, "Large kernels by the FFT, in inference
# too").
FFT = True
FFT_GROUPS = True
FFT_MIN_KERNEL = 7
FFT_MIN_WORK = 1 << 26
FFT_MAX_WIDENING = 4


# Below MIN_CHANNELS_FOR_TAPS input channels (an image's 3), a kernel of PATCHES_MIN_KERNEL or
# more at stride 1, at least PATCHES_MIN_WORK multiply-adds in all: the kernel gradient as one
# product of the input's k*k*Cin patches with the output gradient (`jaxpose.models.patches`).
# Measured alone on the AMD EPYC (2 cores, batch 8, 2026-12-07; docs/performance_log.md, "A thin
# input's kernel gradient from its patches"), against XLA's: CPM's 9x9 on the 368 px image 0.92
# against 2.1-2.4 s, Tompson's 5x5 banks at 256, 128 and 64 px 0.13-0.18 against 0.36 s, 39-49
# against 99 ms, 8 against 16 ms. Not at stride 2 or 4 (the hourglass's 7x7 stem 53-72 against
# 66 ms, DeepPose's 11x11 22-32 against 18 ms) nor for 3x3 kernels (CPM's VGG trunk at 368 px,
# 103-170 against 122 ms). PATCHES_MIN_WORK keeps the quickstarts' layers (up to 1.6e8) XLA's.
PATCHES = True
PATCHES_MIN_KERNEL = 5
PATCHES_MIN_WORK = 1 << 28


# The FFT's, Winograd's and the patches' work above, on a batch split over devices
# (`parallel.tracing_on`: the trainer's data axis), by each device on its own images
# (`jax.shard_map`), the kernel gradients summed over the devices after. XLA's partitioner
# splits neither an FFT nor a loop over groups of images over their batch: it gathered the
# whole batch onto every device, and each did all of these layers' work.
PER_DEVICE = True


def patches_pay(x_shape, kernel_shape, dy_shape, stride: int) -> bool:
  """Whether conv2d's kernel gradient is the patches' product (on CPUs) for these shapes: thin
  inputs, a large kernel at stride 1 and enough work (PATCHES_*)."""
  k = kernel_shape[0]
  return (PATCHES and x_shape[-1] < MIN_CHANNELS_FOR_TAPS and stride == 1
          and k == kernel_shape[1] and k >= PATCHES_MIN_KERNEL
          and tap_work(kernel_shape, dy_shape) * k * k >= PATCHES_MIN_WORK)


def fft_pays(x_shape, kernel_shape, dy_shape, stride: int, padding: int) -> bool:
  """Whether conv2d's value, and under differentiation its gradients, are computed by the FFT
  (on CPUs) for these shapes: FFT, a large odd kernel (FFT_MIN_KERNEL, up to what
  `fft_conv.fits`) at stride 1 with "same" padding, enough work (FFT_MIN_WORK), no more than
  FFT_MAX_WIDENING times the input's channels out, where the taps pay too."""
  k = kernel_shape[0]
  return (FFT and k == kernel_shape[1] and k % 2 == 1
          and k >= FFT_MIN_KERNEL and fft_conv.fits(k)
          and kernel_shape[3] <= FFT_MAX_WIDENING * kernel_shape[2]
          and stride == 1 and padding == k // 2 and taps_pay(x_shape, kernel_shape, dy_shape)
          and tap_work(kernel_shape, dy_shape) >= FFT_MIN_WORK)


def tap_work(kernel_shape, dy_shape) -> int:
  """Multiply-adds of one tap's product in conv2d's kernel gradient: N*H'*W' * Cin * Cout."""
  return math.prod(dy_shape[:-1]) * kernel_shape[2] * kernel_shape[3]


def taps_pay(x_shape, kernel_shape, dy_shape) -> bool:
  """Whether conv2d's kernel gradient is computed as tap products (on CPUs) for these shapes:
  wide enough inputs and enough work per tap (MIN_CHANNELS_FOR_TAPS, MIN_WORK_FOR_TAPS)."""
  return (x_shape[-1] >= MIN_CHANNELS_FOR_TAPS
          and tap_work(kernel_shape, dy_shape) >= MIN_WORK_FOR_TAPS)


def lax_conv2d(x, kernel, stride: int, padding: int):
  """lax's convolution, [N,H,W,Cin] * [k,k,Cin,Cout] -> [N,H',W',Cout], symmetric zero
  padding: XLA's own, on every platform."""
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), [(padding, padding)] * 2,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x, kernel, stride: int, padding: int):
  """[N,H,W,Cin] * [k,k,Cin,Cout] -> [N,H',W',Cout], symmetric zero padding: lax's convolution,
  with its kernel gradient, on CPUs where it pays (`taps_pay`), computed as k*k matrix products
  of strided input windows with the output gradient (a sum over N*H'*W' each): the whole
  gradient in 0.74-0.76x nn.Conv's time at the hourglass's 3x3 on 128 channels (`python
  benchmarks/backward.py`); for a 3x3 kernel at stride 1 and padding 1, by Winograd's F(4x4,
  3x3) instead (WINOGRAD); for larger odd kernels at stride 1 and "same" padding (`fft_pays`),
  the value and both gradients by the FFT (FFT), in inference as in training, so a model
  computes the same function in both; for thin inputs (`patches_pay`), the kernel gradient as
  one product of the input's patches (PATCHES). Lowered for other platforms, XLA's own
  convolution and gradient."""
  return _conv2d_value(x, kernel, stride, padding)


def _conv2d_value(x, kernel, stride, padding):
  """conv2d's value: by the FFT where `fft_pays` (CPUs), else lax's convolution."""
  xla = functools.partial(lax_conv2d, stride=stride, padding=padding)
  if not fft_pays(x.shape, kernel.shape, (*x.shape[:3], kernel.shape[-1]), stride, padding):
    return xla(x, kernel)

  def fft(x, kernel):  # Each device's images (`_per_device`): tiles and groups for them.
    return fft_conv.correlate(x, kernel, group=_fft_group(x.shape)).astype(x.dtype)

  return on_cpu(functools.partial(_per_device, fft, batched=(True, False), summed=False), xla,
                x, kernel)


def _conv2d_fwd(x, kernel, stride, padding):
  return _conv2d_value(x, kernel, stride, padding), (x, kernel)


def _conv2d_bwd(stride, padding, residuals, dy):
  x, kernel = residuals
  xla = functools.partial(_conv2d_bwd_xla, stride, padding)
  if patches_pay(x.shape, kernel.shape, dy.shape, stride):
    return on_cpu(functools.partial(_conv2d_bwd_patches, padding), xla, x, kernel, dy)
  if not taps_pay(x.shape, kernel.shape, dy.shape):  # Thin or small: XLA's own is faster.
    return xla(x, kernel, dy)
  if WINOGRAD and (kernel.shape[:2], stride, padding) == ((3, 3), 1, 1):
    return on_cpu(_conv2d_bwd_winograd, xla, x, kernel, dy)
  if fft_pays(x.shape, kernel.shape, dy.shape, stride, padding):
    return on_cpu(_conv2d_bwd_fft, xla, x, kernel, dy)
  return on_cpu(functools.partial(_conv2d_bwd_taps, stride, padding), xla, x, kernel, dy)


def _conv2d_input_gradient(stride, padding, x, kernel, dy):
  """XLA's gradient of the convolution for its input, beside a written-out kernel gradient."""
  _, input_vjp = jax.vjp(lambda x: lax_conv2d(x, kernel, stride, padding), x)
  return input_vjp(dy)[0]


def _conv2d_bwd_winograd(x, kernel, dy):
  """A 3x3 convolution's gradients at stride 1, padding 1 (CPUs): the input's XLA's, the
  kernel's by Winograd's F(4x4, 3x3) (`winograd.kernel_gradient`)."""
  dx = _conv2d_input_gradient(1, 1, x, kernel, dy)
  # x after dy: its transform in the backward pass, not kept from the forward (see `after`).
  dk = _per_device(winograd.kernel_gradient, after(x, dy), dy, batched=(True, True), summed=True)
  return dx, dk.astype(kernel.dtype)


def _conv2d_bwd_patches(padding, x, kernel, dy):
  """A thin input's gradients at stride 1 (CPUs): the input's XLA's, the kernel's the patches'
  product (`patches.kernel_gradient`)."""
  dx = _conv2d_input_gradient(1, padding, x, kernel, dy)
  dk = _per_device(functools.partial(patches.kernel_gradient, k=kernel.shape[0], padding=padding),
                   after(x, dy), dy, batched=(True, True), summed=True)
  return dx, dk.astype(kernel.dtype)


def _conv2d_bwd_fft(x, kernel, dy):
  """A large kernel's gradients at stride 1, "same" padding (CPUs), both by the FFT
  (`fft_conv`)."""
  # Each device's images (`_per_device`): the tiles and groups chosen for them.
  def input_gradient(dy, kernel):
    return fft_conv.input_gradient(dy, kernel, group=_fft_group(dy.shape))

  def kernel_gradient(x, dy):
    return fft_conv.kernel_gradient(x, dy, kernel.shape[0], group=_fft_group(x.shape))

  dx = _per_device(input_gradient, dy, kernel, batched=(True, False), summed=False)
  # x after dy: its transform in the backward pass, not kept from the forward (see `after`).
  dk = _per_device(kernel_gradient, after(x, dy), dy, batched=(True, True), summed=True)
  return dx.astype(x.dtype), dk.astype(kernel.dtype)


def _per_device(fn, *args, batched: tuple[bool, ...], summed: bool):
  """fn(*args) on each device's images of a batch split over devices
  (`parallel.per_device`), where PER_DEVICE; else XLA's partitioner's way."""
  if not PER_DEVICE:
    return fn(*args)
  return parallel.per_device(fn, *args, batched=batched, summed=summed)


def _fft_group(x_shape) -> int | None:
  """The FFT's images at a time: `fft_conv.image_group`'s (None) or, without FFT_GROUPS, all."""
  return None if FFT_GROUPS else x_shape[0]


def _conv2d_bwd_xla(stride, padding, x, kernel, dy):
  """XLA's own gradient of the convolution (thin inputs on CPUs; GPUs and TPUs)."""
  _, vjp = jax.vjp(functools.partial(lax_conv2d, stride=stride, padding=padding), x, kernel)
  return vjp(dy)


def _conv2d_bwd_taps(stride, padding, x, kernel, dy):
  """The kernel gradient as k*k products of input windows with dy (CPUs)."""
  k, c = kernel.shape[0], x.shape[-1]
  dx = _conv2d_input_gradient(stride, padding, x, kernel, dy)
  xp = jnp.pad(after(x, dy), ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  ho, wo = dy.shape[1], dy.shape[2]
  span = (x.shape[0], stride * (ho - 1) + 1, stride * (wo - 1) + 1, c)
  rows = math.prod(dy.shape[:-1])  # One per output pixel.
  parts = TAP_PRODUCT_PARTS if rows % TAP_PRODUCT_PARTS == 0 else 1
  part_dy = dy.reshape(parts, rows // parts, dy.shape[-1])

  def tap(_, ij):  # The inputs kernel tap (i, j) met, one row per output pixel.
    window = jax.lax.dynamic_slice(xp, (0, ij[0], ij[1], 0), span)[:, ::stride, ::stride]
    partial = jnp.einsum("pmc,pmo->pco", window.reshape(parts, -1, c), part_dy,
                         preferred_element_type=jnp.float32)
    return None, partial.sum(0)

  # A scan, not k*k independent products: XLA would schedule all the windows' copies at once
  # (measured: +1.2 GB of temporaries in the 2-stack hourglass's step).
  taps = jnp.stack(jnp.meshgrid(jnp.arange(k), jnp.arange(k), indexing="ij"), -1).reshape(-1, 2)
  _, dk = jax.lax.scan(tap, None, taps)
  return dx, dk.reshape(kernel.shape).astype(kernel.dtype)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


class Conv(nn.Module):
  """A square convolution with `nn.Conv`'s parameters (`kernel` [k,k,Cin,Cout], `bias`), dtype
  handling and forward pass, symmetric zero padding, and `conv2d`'s faster kernel gradient."""

  features: int
  kernel_size: int
  strides: int = 1
  padding: int = 0
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  kernel_init: Any = nn.linear.default_kernel_init
  bias_init: Any = nn.initializers.zeros

  def __call__(self, x):
    kernel, bias = self.weights(x.shape[-1])
    return add_bias(conv2d(x.astype(self.dtype), kernel, self.strides, self.padding), bias)

  @nn.compact
  def weights(self, in_features: int):
    """(kernel [k, k, in_features, features], bias or None), in the computation dtype."""
    k = self.kernel_size
    kernel = param(self, "kernel", self.kernel_init, (k, k, in_features, self.features))
    return kernel.astype(self.dtype), _bias(self)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _normalize(x, mean, var, scale, bias, epsilon: float):
  """(x - mean) / sqrt(var + epsilon) * scale + bias over the last axis, where mean and var
  are x's own batch statistics over the other axes: the gradient is the closed form
  (dx = scale * rstd / n * (n dy - sum dy - xhat sum(dy xhat))), not the statistics' chain,
  with zero cotangents for mean and var, whose influence it already holds: 0.64-0.72x the
  time of autodiff's gradient (`python benchmarks/backward.py`). Only valid for batch
  statistics: BatchNorm calls it in training mode only."""
  return (x - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias


def _normalize_fwd(x, mean, var, scale, bias, epsilon):
  rstd = jax.lax.rsqrt(var + epsilon)
  return (x - mean) * (rstd * scale) + bias, (x, mean, rstd, scale)


def _normalize_bwd(epsilon, residuals, dy):
  del epsilon  # In rstd already.
  x, mean, rstd, scale = residuals
  xhat = (after(x, dy) - mean) * rstd
  dbias, dscale = scale_bias_gradients(dy, xhat)
  n = x.size // x.shape[-1]
  dx = (scale * rstd / n) * (n * dy - dbias - xhat * dscale)
  zero = jnp.zeros_like(mean)
  return dx, zero, zero, dscale, dbias


_normalize.defvjp(_normalize_fwd, _normalize_bwd)


def batch_moments(x, shift):
  """(mean, biased variance) of float32 `x` over all but its last axis, [C] each, by two passes
  over x. On a batch split over devices (`parallel.device_shares`), each device takes the
  two-pass moments of its own images, and the devices' moments are combined about `shift` in
  one all-reduce (Chan, Golub & LeVeque's pairwise formula), where XLA's partitioner made two,
  the second waiting for the first: synchronised BatchNorm pays a round trip between devices
  per all-reduce, layer after layer (the 2-stack hourglass's step on two processes of one core
  each, gloo: 0.73-0.84x; docs/performance_log.md, "BatchNorm's statistics in one all-reduce").

  Precision: the combination subtracts the squared offset of the batch's mean from `shift`, so
  the variance loses ~1e-7 x (mean - shift)^2 to rounding. BatchNorm passes its running mean:
  close to the batch's mean after the first steps, 0 before. Flax's BatchNorm over an axis
  name (use_fast_variance) makes the same single all-reduce about 0, from one-pass moments on
  each device too."""
  shares = parallel.device_shares(x)
  if shares is None:
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axes)
    return mean, jnp.mean(jnp.square(x - mean), axes)
  inner = tuple(range(1, shares.ndim - 1))
  local_mean = jnp.mean(shares, inner, keepdims=True)
  local_var = jnp.mean(jnp.square(shares - local_mean), inner)
  offset = local_mean.reshape(len(shares), -1) - shift
  # Over the devices (equal shares): the mean's offset, and the mean square about the shift.
  offset_mean, square = jnp.mean(jnp.stack([offset, local_var + jnp.square(offset)]), axis=1)
  return shift + offset_mean, jnp.maximum(square - jnp.square(offset_mean), 0.0)


def scale_bias_gradients(dy, xhat):
  """(sum of dy, sum of dy * xhat) over all but the last axis: BatchNorm's bias and scale
  gradients. On a batch split over devices (`parallel.device_shares`), the devices' sums go in
  one all-reduce, where XLA's partitioner made one each."""
  dy_shares = parallel.device_shares(dy)
  if dy_shares is None:
    axes = tuple(range(dy.ndim - 1))
    return jnp.sum(dy, axes), jnp.sum(dy * xhat, axes)
  inner = tuple(range(1, dy_shares.ndim - 1))
  products = parallel.device_shares(dy * xhat)
  sums = jnp.stack([jnp.sum(dy_shares, inner), jnp.sum(products, inner)])  # [2, devices, C]
  return tuple(jnp.sum(sums, axis=1))


# The collection into which BatchNorm layers in training put the statistics of each call
# ("mean", and "var" as the running variance takes it), as tuples, when the caller makes it
# mutable; otherwise nothing is kept. `steps.precise_batch_stats` averages them.
BATCH_MOMENTS = "batch_moments"


class BatchNorm(nn.Module):
  """Batch normalisation over all but the last axis: [..., C] -> [..., C].

  Variables as Flax's nn.BatchNorm (params `scale`, `bias`; batch_stats `mean`, `var`), so
  checkpoints and weight converters treat both alike. Statistics are computed in float32 with
  the two-pass variance (`batch_moments`), over the whole batch however many devices share
  it. Normalisation uses the biased batch variance, as both frameworks do;
  with `unbiased_running_var` the running variance is updated with the unbiased one
  (x n/(n-1), n values per channel), as PyTorch's BatchNorm2d does, which matters at small
  feature maps (the hourglass's 4x4 bottom at batch 6: n = 96, 1% of every update).
  """

  use_running_average: bool = False
  momentum: float = 0.9  # Flax convention: running = momentum * running + (1 - momentum) * batch.
  epsilon: float = 1e-5
  unbiased_running_var: bool = False
  dtype: Dtype = jnp.float32

  def __call__(self, x):
    mean, var, scale, bias = self.statistics(x)
    x32 = x.astype(jnp.float32)
    if not self.use_running_average:
      return _normalize(x32, mean, var, scale, bias, self.epsilon).astype(self.dtype)
    mul = jax.lax.rsqrt(var + self.epsilon) * scale
    return ((x32 - mean) * mul + bias).astype(self.dtype)

  @nn.compact
  def statistics(self, x):
    """(mean, var, scale, bias) that normalise x, all [C] float32: the batch's statistics in
    training (the running ones updated; no gradient flows through them), the running ones
    otherwise."""
    c = x.shape[-1]
    scale = param(self, "scale", nn.initializers.ones, (c,))
    bias = param(self, "bias", nn.initializers.zeros, (c,))
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
    if self.use_running_average:
      return ra_mean.value, ra_var.value, scale, bias
    # No gradient through the statistics: `_normalize` and `bn_relu_conv`, their only
    # differentiated users, give them zero cotangents (their gradient for x holds the
    # statistics' part). Autodiff through them kept 2 (x - mean) for the variance's gradient
    # and added its product with that zero to x's gradient; XLA does not fold a product with
    # zero away, so every BatchNorm paid a full pass for nothing (the 8-stack hourglass's
    # train step 15.1 -> 12.0 s on 2 cores; docs/performance_log.md). Callers that differentiate
    # the returned statistics themselves get no gradient from them.
    x32 = jax.lax.stop_gradient(x.astype(jnp.float32))
    mean, var = batch_moments(x32, ra_mean.value)
    if not self.is_initializing():
      n = x.size // c
      running_var = var * (n / max(n - 1, 1)) if self.unbiased_running_var else var
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * running_var
      # What this call would add to the running statistics, where the caller collects them.
      self.sow(BATCH_MOMENTS, "mean", mean)
      self.sow(BATCH_MOMENTS, "var", running_var)
    return mean, var, scale, bias


def batch_norm(train: bool, dtype: Dtype, name: str | None = None) -> BatchNorm:
  """BatchNorm as PyTorch's BatchNorm2d: momentum 0.1 (Flax's 0.9), eps 1e-5, and the running
  variance updated with the unbiased batch variance."""
  return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                   unbiased_running_var=True, dtype=dtype, name=name)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def bn_relu_conv(x, mean, var, scale, bias, kernel, epsilon: float, geometry):
  """conv(relu(batch-normalise(x))) in training, keeping only x for the backward pass: the
  normalised and rectified activations are recomputed there, so a pre-activation block holds
  one activation per layer instead of about four (measured on 12 dense layers: temporaries
  784 -> 448 MB). `jax.checkpoint` cannot do this on XLA's CPU backend, which merges the
  recomputation with the forward pass's identical expressions. `geometry`: None for a 1x1
  (`dense` over channels), else (stride, padding) for `conv2d`. mean and var must be x's batch
  statistics (as `_normalize`)."""
  y = jax.nn.relu(_normalize.fun(x.astype(jnp.float32), mean, var, scale, bias, epsilon))
  return _product(geometry, y.astype(kernel.dtype), kernel)


def _product(geometry, y, kernel):
  return dense.fun(y, kernel) if geometry is None else _conv2d_value(y, kernel, *geometry)


def _bn_relu_conv_fwd(x, mean, var, scale, bias, kernel, epsilon, geometry):
  out = bn_relu_conv(x, mean, var, scale, bias, kernel, epsilon, geometry)
  return out, (x, mean, var, scale, bias, kernel)


def _bn_relu_conv_bwd(epsilon, geometry, residuals, dout):
  x, mean, var, scale, bias, kernel = residuals
  # After dout exists (`after`): otherwise XLA merges this with the forward pass's identical
  # expressions, which would keep those alive.
  x = after(x, dout)
  x32 = x.astype(jnp.float32)
  pre = _normalize.fun(x32, mean, var, scale, bias, epsilon)  # The forward pass's, again.
  y = jax.nn.relu(pre).astype(kernel.dtype)
  if geometry is None:
    dy, dk = _dense_bwd((y, kernel), dout)
  else:
    dy, dk = _conv2d_bwd(*geometry, (y, kernel), dout)
  dpre = jnp.where(pre > 0, dy.astype(jnp.float32), 0.0)
  rstd = jax.lax.rsqrt(var + epsilon)
  dx, zero, _, dscale, dbias = _normalize_bwd(epsilon, (x32, mean, rstd, scale), dpre)
  return dx.astype(x.dtype), zero, zero, dscale, dbias, dk


bn_relu_conv.defvjp(_bn_relu_conv_fwd, _bn_relu_conv_bwd)


class Bottleneck(nn.Module):
  """Pre-activation residual bottleneck (Newell et al. 2016): [N,H,W,Cin] -> [N,H,W,features].

  BN-ReLU-conv1x1(features/2), BN-ReLU-conv3x3(features/2), BN-ReLU-conv1x1(features), plus the
  input, projected by a 1x1 convolution when its width differs. Convolutions carry biases as in
  the authors' Torch code and the PyTorch reference.
  """

  features: int
  init_scheme: str = "lecun"  # "pytorch" or "lecun" (see the module docstring).
  dtype: Dtype = jnp.float32
  # In training, each BN-ReLU-conv as `bn_relu_conv`: one activation kept per layer, the rest
  # recomputed in the backward pass (less memory, more time).
  recompute: bool = False

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    conv1x1 = functools.partial(Conv1x1, init_scheme=self.init_scheme, dtype=self.dtype)
    mid = self.features // 2

    def unit(y, bn_name, conv, geometry):
      bn = batch_norm(train, self.dtype, name=bn_name)
      if not (train and self.recompute):
        return conv(nn.relu(bn(y)))
      kernel, conv_bias = conv.weights(y.shape[-1])
      mean, var, scale, bias = bn.statistics(y)
      return add_bias(bn_relu_conv(y, mean, var, scale, bias, kernel, bn.epsilon, geometry),
                      conv_bias)

    y = unit(x, "bn1", conv1x1(mid, name="conv1"), None)
    y = unit(y, "bn2", Conv(mid, 3, padding=1, dtype=self.dtype, name="conv2",
                            **conv_inits(self.init_scheme, mid * 9)), (1, 1))
    y = unit(y, "bn3", conv1x1(self.features, name="conv3"), None)
    if x.shape[-1] != self.features:
      x = conv1x1(self.features, name="proj")(x)
    return x + y


class ConvBNReLU(nn.Module):
  """Convolution, BatchNorm, ReLU: [N,H,W,C] -> [N,H',W',features]."""

  features: int
  kernel_size: int = 3
  strides: int = 1
  padding: int | None = None  # Default: kernel_size // 2 ("same" for odd kernels).
  use_bias: bool = True
  init_scheme: str = "lecun"  # "pytorch" or "lecun" (see the module docstring).
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    k = self.kernel_size
    if k == 1 and self.strides == 1:
      x = Conv1x1(self.features, use_bias=self.use_bias, init_scheme=self.init_scheme,
                  dtype=self.dtype, name="conv")(x)
    else:
      pad = k // 2 if self.padding is None else self.padding
      x = Conv(self.features, k, strides=self.strides, padding=pad, use_bias=self.use_bias,
               dtype=self.dtype, name="conv",
               **conv_inits(self.init_scheme, x.shape[-1] * k * k))(x)
    return nn.relu(batch_norm(train, self.dtype, name="bn")(x))


def upsample_nearest(x, factor: int = 2):
  """Nearest-neighbour upsampling: [N,H,W,C] -> [N,factor*H,factor*W,C]."""
  x = jnp.repeat(x, factor, axis=1)
  return jnp.repeat(x, factor, axis=2)


def max_pool2(x):
  """2x2 max pooling with stride 2: [N,H,W,C] -> [N,floor(H/2),floor(W/2),C] (as VALID
  pooling rounds): `max_pool` over the even-sized part, so `nn.max_pool`'s values and, for a
  2x2 window, autodiff's gradient of the strided maxima (ties shared)."""
  return max_pool(x[:, :x.shape[1] // 2 * 2, :x.shape[2] // 2 * 2], 2, 2, ((0, 0), (0, 0)))


def max_pool_ceil(x, window: int, stride: int):
  """Max pooling with Caffe's / Chainer's ceil rounding: [N,H,W,C] -> [N,ceil((H-k)/s)+1,...].

  Flax (like PyTorch's default) rounds the output size down; Caffe rounds up, so the last
  window may hang over the bottom / right edge. Padding those edges with -inf (never chosen by
  the max) reproduces Caffe's sizes and values: 368 -> 184 -> 92 -> 46 with k3 s2, which
  VALID pooling would make 183 -> 91 -> 45.
  """
  pads = ceil_padding(x, window, stride)
  if min(x.shape[1:3]) < window:  # No whole window fits: as reduce_window rounds it.
    return nn.max_pool(x, (window, window), strides=(stride, stride), padding=pads)
  return max_pool(x, window, stride, pads)


def max_pool(x, window: int, stride: int, padding: Sequence[tuple[int, int]]):
  """`nn.max_pool(x, (window, window), (stride, stride), padding)` with -inf padding, computed
  as a separable maximum of strided slices (rows, then columns): the same values.

  XLA's select-and-scatter gradient of `reduce_window` costs ~8x the forward pass on CPU
  (`benchmarks/pooling.py`). For windows of 3 or more, the gradient is written out
  (`_max_pool_bwd`): each output's gradient goes to the first maximum of its window (the first
  column holding it, then the first row in that column; select-and-scatter takes the first in
  row-major order: both are subgradients, and they differ only on ties), as selects and strided
  pads. Autodiff of the slices' maxima shares ties instead, through compares, selects and
  divisions at every tap. The IEF quickstart's step with all nine Inception modules (9 pools
  of 3x3/1, 4 of 3x3/2) takes 0.96x / 0.93x / 0.94x autodiff's time in its three phases; CPM's
  and DeepPose's (3x3/2 only) 0.99x / 1.00x (docs/performance_log.md). For 2x2 windows
  autodiff's is kept: one maximum per axis leaves it little to share, and the written-out
  gradient made Tompson's quickstart step 1.07x slower, the 2-stack hourglass's (`max_pool2`)
  1.02x. Lowered for other platforms, autodiff's gradient (`on_cpu`).
  """
  if window <= 2:
    return _max_pool_rows_columns(x, window, stride, padding)
  return _max_pool(x, window, stride, tuple(tuple(p) for p in padding))


def _max_pool_rows_columns(x, window: int, stride: int, padding):
  """The pooling's values, with autodiff's gradient."""
  _, rows = _max_pool_rows(x, window, stride, padding)
  return functools.reduce(jnp.maximum, _window_taps(rows, window, stride, 2))


def _window_taps(x, window: int, stride: int, axis: int):
  """The `window` strided slices of x along `axis` whose maximum is the pooling's."""
  out = (x.shape[axis] - window) // stride + 1
  return [jax.lax.slice_in_dim(x, i, i + stride * (out - 1) + 1, stride, axis)
          for i in range(window)]


def _max_pool_rows(x, window: int, stride: int, padding):
  """x padded with -inf and its maximum over rows: the residual the columns' pass reads."""
  x = jnp.pad(x, [(0, 0), *padding, (0, 0)], constant_values=-jnp.inf)
  return x, functools.reduce(jnp.maximum, _window_taps(x, window, stride, 1))


_max_pool = jax.custom_vjp(_max_pool_rows_columns, nondiff_argnums=(1, 2, 3))


def _max_pool_fwd(x, window, stride, padding):
  y = _max_pool(x, window, stride, padding)
  return y, (x, y)


def _first_max_gradient(x, y, dy, window: int, stride: int, axis: int):
  """The gradient of y = max over `window` taps of x along `axis` (`_window_taps`), given
  dy: at each output, to the first tap equal to the maximum."""
  taken = jnp.zeros(y.shape, bool)  # Outputs whose maximum an earlier tap already took.
  dx = 0
  for i, tap in enumerate(_window_taps(x, window, stride, axis)):
    hit = (tap == y) & ~taken
    taken = taken | hit
    spread = [(0, 0, 0)] * x.ndim  # The slice's transpose: back to every stride-th place.
    spread[axis] = (i, x.shape[axis] - i - stride * (y.shape[axis] - 1) - 1, stride - 1)
    dx = dx + jax.lax.pad(jnp.where(hit, dy, jnp.zeros((), dy.dtype)),
                          jnp.zeros((), dy.dtype), spread)
  return dx


def _max_pool_bwd(window, stride, padding, residuals, dy):
  # Measured on CPUs only: lowered for other platforms, autodiff's gradient (ties shared), as
  # the pooling had before.
  geometry = (window, stride, padding)
  return (on_cpu(functools.partial(_max_pool_bwd_cpu, *geometry),
                 functools.partial(_max_pool_bwd_autodiff, *geometry), *residuals, dy),)


def _max_pool_bwd_cpu(window, stride, padding, x, y, dy):
  """Each window's gradient to its first maximum: through the columns' maxima, then the rows'."""
  # The row maxima are recomputed here, after dy (`after`), rather than kept from the forward.
  padded, rows = _max_pool_rows(after(x, dy), window, stride, padding)
  d_rows = _first_max_gradient(rows, y, dy, window, stride, 2)
  d_padded = _first_max_gradient(padded, rows, d_rows, window, stride, 1)
  (top, _), (left, _) = padding
  return d_padded[:, top:top + x.shape[1], left:left + x.shape[2]]


def _max_pool_bwd_autodiff(window, stride, padding, x, y, dy):
  """Autodiff's gradient of the strided maxima (GPUs and TPUs)."""
  del y
  _, vjp = jax.vjp(lambda x: _max_pool_rows_columns(x, window, stride, padding), x)
  return vjp(dy)[0]


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def avg_pool_ceil(x, window: int, stride: int):
  """Average pooling with Caffe's ceil rounding, each window divided by its number of valid
  pixels (Caffe clips the overhanging last window; Flax would count padded zeros)."""
  return nn.avg_pool(x, (window, window), strides=(stride, stride),
                     padding=ceil_padding(x, window, stride), count_include_pad=False)


def ceil_padding(x, window: int, stride: int) -> list[tuple[int, int]]:
  """The (top, bottom), (left, right) padding of x [N,H,W,C] that makes a pooling round its
  output size up (Caffe): none at the top / left, and at the bottom / right the pixels past the
  edge that the last window covers."""
  pads = []
  for size in x.shape[1:3]:
    out = -(-(size - window) // stride) + 1
    pads.append((0, max(0, (out - 1) * stride + window - size)))
  return pads


def local_response_norm(x, size: int = 5, k: float = 2.0, alpha: float = 1e-4,
                        beta: float = 0.75):
  """Across-channel local response normalisation: [..., C] -> [..., C].

  y_c = x_c / (k + alpha * sum of x_d^2 over the `size` channels d centred on c) ** beta, the
  formula of Krizhevsky et al. (2012) and of Chainer, whose defaults these are. Caffe divides
  alpha by `size` and defaults k to 1: pass alpha=caffe_alpha / size, k=1 for a Caffe model.
  """
  sq = jnp.square(x.astype(jnp.float32))
  window = (1,) * (x.ndim - 1) + (size,)
  pads = ((0, 0),) * (x.ndim - 1) + ((size // 2, (size - 1) // 2),)
  total = jax.lax.reduce_window(sq, 0.0, jax.lax.add, window, (1,) * x.ndim, pads)
  return (x.astype(jnp.float32) * (k + alpha * total) ** -beta).astype(x.dtype)
