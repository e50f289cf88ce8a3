"""Stacked Hourglass Networks for Human Pose Estimation (Newell, Yang, Deng; ECCV 2016).

Usage as a pure function:

  model = hourglass.StackedHourglass(num_stacks=2, num_joints=16)
  variables = model.init(rng, images, train=False)      # images: [N, 256, 256, 3] float
  heatmaps = model.apply(variables, images)              # tuple of num_stacks x [N, 64, 64, 16]

Layer sizes follow the paper and the authors' Torch code; where the paper is silent (the stem's
widths, biases on every convolution, the 1x1 re-injection of each stack's features and scores)
the module follows the released code and the widely used PyTorch port, so the 8-stack model has
exactly that port's 25,594,624 parameters (plus BatchNorm statistics), with the same
parameter layout: `jaxpose.convert.from_pytorch_pose` imports its checkpoints. By default it
also initialises as that port does (PyTorch's default initialisers; `init_scheme="lecun"` gives
Flax's) and updates BatchNorm's running variance as PyTorch does (`layers.batch_norm`).
"""

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxpose.models import layers

Dtype = Any


class Residuals(nn.Module):
  """`num_blocks` bottlenecks in a row: [N,H,W,C] -> [N,H,W,features]."""

  features: int
  num_blocks: int
  init_scheme: str = "pytorch"
  dtype: Dtype = jnp.float32
  recompute: bool = False  # layers.Bottleneck's: keep one activation per layer in training.

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    for i in range(self.num_blocks):
      x = layers.Bottleneck(self.features, init_scheme=self.init_scheme, dtype=self.dtype,
                            recompute=self.recompute, name=f"block{i}")(x, train=train)
    return x


class Hourglass(nn.Module):
  """One hourglass of the given depth, unrolled at trace time: [N,H,W,F] -> [N,H,W,F].

  H and W must be divisible by 2**depth. Skip branch at every resolution; the bottom of the
  recursion has one more residual group.
  """

  features: int
  depth: int
  num_blocks: int = 1
  init_scheme: str = "pytorch"
  dtype: Dtype = jnp.float32
  recompute: bool = False

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    res = functools.partial(Residuals, self.features, self.num_blocks,
                            init_scheme=self.init_scheme, dtype=self.dtype,
                            recompute=self.recompute)
    up = res(name="up")(x, train=train)
    low = res(name="down")(layers.max_pool2(x), train=train)
    if self.depth > 1:
      low = Hourglass(self.features, self.depth - 1, self.num_blocks,
                      init_scheme=self.init_scheme, dtype=self.dtype,
                      recompute=self.recompute, name="inner")(
                          low, train=train)
    else:
      low = res(name="bottom")(low, train=train)
    low = res(name="low")(low, train=train)
    return up + layers.upsample_nearest(low)


# The stem's layers, in `StackedHourglass`'s root scope (and `Stem`'s).
STEM_LAYERS = ("stem_conv", "stem_res1", "stem_res2", "stem_res3")


def stem_layers(x, features: int, *, train: bool, init_scheme: str, dtype: Dtype,
                recompute: bool = False):
  """The stem, 4x down: 7x7/2 convolution (pad 3, as the PyTorch port), a residual, a 2x2 pool,
  two residuals; images [N,H,W,3] -> [N,H/4,W/4,features] in `dtype`. Its layers (STEM_LAYERS)
  are made in the calling module's scope: `StackedHourglass`'s root, or `Stem`'s, so both hold
  the same parameter tree."""
  kw = dict(init_scheme=init_scheme, dtype=dtype)
  conv, res1, res2, res3 = STEM_LAYERS
  x = layers.ConvBNReLU(features // 4, kernel_size=7, strides=2, padding=3, name=conv,
                        **kw)(x.astype(dtype), train=train)
  block = functools.partial(layers.Bottleneck, recompute=recompute, **kw)
  x = block(features // 2, name=res1)(x, train=train)
  x = layers.max_pool2(x)
  x = block(features, name=res2)(x, train=train)
  return block(features, name=res3)(x, train=train)


class Stem(nn.Module):
  """`StackedHourglass`'s stem as a module of its own, (images, train) -> features, applied to
  the STEM_LAYERS subtrees of its variables (`segment_modules`)."""

  features: int = 256
  init_scheme: str = "pytorch"
  dtype: Dtype = jnp.float32
  recompute: bool = False

  @nn.compact
  def __call__(self, x, train):
    return stem_layers(x, self.features, train=train, init_scheme=self.init_scheme,
                       dtype=self.dtype, recompute=self.recompute)


class Stack(nn.Module):
  """One stack: hourglass, residuals, 1x1 head. (x [N,h,w,F], train) -> (next x, heatmaps).

  `train` is positional so that `nn.remat` can mark it static.
  """

  features: int
  depth: int
  num_blocks: int
  num_joints: int
  last: bool
  init_scheme: str = "pytorch"
  dtype: Dtype = jnp.float32
  recompute: bool = False

  @nn.compact
  def __call__(self, x, train):
    kw = dict(init_scheme=self.init_scheme, dtype=self.dtype)
    y = Hourglass(self.features, self.depth, self.num_blocks, recompute=self.recompute,
                  name="hourglass", **kw)(x, train=train)
    y = Residuals(self.features, self.num_blocks, recompute=self.recompute, name="res", **kw)(
        y, train=train)
    y = layers.ConvBNReLU(self.features, kernel_size=1, name="fc", **kw)(y, train=train)
    heatmaps = layers.Conv1x1(self.num_joints, name="score", **kw)(y)
    if not self.last:  # Intermediate predictions re-enter the next stack.
      x = (x + layers.Conv1x1(self.features, name="fc_back", **kw)(y)
           + layers.Conv1x1(self.features, name="score_back", **kw)(heatmaps))
    return x, heatmaps


class StackedHourglass(nn.Module):
  """Images [N,H,W,3] -> tuple of `num_stacks` heat maps [N,H/4,W/4,num_joints] (float32).

  H and W must be divisible by 4 * 2**depth (64 for the paper's depth 4).
  """

  num_stacks: int = 8
  num_joints: int = 16
  features: int = 256  # Width inside the hourglasses (the paper's 256).
  depth: int = 4  # Number of 2x downsamplings inside each hourglass (64 -> 4 px).
  num_blocks: int = 1  # Residual modules per hourglass level.
  # Rematerialise in the backward pass: each stack (`nn.remat`) and, in every bottleneck, the
  # BatchNorm-ReLU outputs (`layers.bn_relu_conv`). XLA on CPU merges `nn.remat`'s recomputation
  # back into the forward pass (measured: the same 64 convolutions and temporaries, 2 and 4
  # stacks); the bottlenecks' recomputation holds there: the 2-stack step's temporaries 1,484 ->
  # 1,273 MiB at batch 8, 256 px (2,314 -> 1,330 before `layers.after` kept the gradients' own
  # work out of the forward pass), for 20-45% more time a step.
  remat: bool = False
  # Initialisers: "pytorch" (the PyTorch port's: U(+-1/sqrt(fan_in)) kernels and biases) or
  # "lecun" (Flax's default: LeCun-normal kernels, zero biases). BatchNorm: scale 1, bias 0.
  init_scheme: str = "pytorch"
  dtype: Dtype = jnp.float32  # Computation dtype; parameters stay float32.

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    f = self.features
    kw = dict(init_scheme=self.init_scheme, dtype=self.dtype)
    x = stem_layers(x, f, train=train, recompute=self.remat, **kw)
    stack_cls = nn.remat(Stack, static_argnums=(2,)) if self.remat else Stack
    outputs = []
    for i in range(self.num_stacks):
      x, heatmaps = stack_cls(f, self.depth, self.num_blocks, self.num_joints,
                              last=i == self.num_stacks - 1, recompute=self.remat,
                              name=f"stack{i}", **kw)(x, train)
      outputs.append(heatmaps.astype(jnp.float32))
    return tuple(outputs)


def segment_modules(model: StackedHourglass, recompute: bool = True) -> tuple[Stem, Stack, Stack]:
  """`model` as unbound modules of its parts: its stem (applied to the root's STEM_LAYERS
  subtrees), a middle stack and the last stack (each applied to its "stackI" subtree), with
  the model's sizes, initialisers and dtype: the segments of a step that runs them as
  programs of their own (`families.heatmaps.hourglass_segments`)."""
  kw = dict(init_scheme=model.init_scheme, dtype=model.dtype, recompute=recompute)
  stack = functools.partial(Stack, model.features, model.depth, model.num_blocks,
                            model.num_joints, **kw)
  return Stem(model.features, **kw), stack(last=False), stack(last=True)


Hourglass8 = functools.partial(StackedHourglass, num_stacks=8)
Hourglass2 = functools.partial(StackedHourglass, num_stacks=2)
# Small enough for unit tests and the CPU quickstart.
HourglassTiny = functools.partial(StackedHourglass, num_stacks=1, features=32, depth=2)
