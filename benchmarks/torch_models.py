"""PyTorch Stacked Hourglass: the reference for golden files, weight import and benchmarks.

Needs torch (requirements-torch.txt); nothing in `jaxpose` imports this file.

The architecture of the widely used PyTorch port (bearpaw/pytorch-pose, `hg` with its
pre-activation Bottleneck of expansion 2 and one block per level), written afresh with the
port's `state_dict` key names, so a state_dict here has the keys and shapes of the released
hg_s2_b1 / hg_s8_b1 checkpoints (without their DataParallel `module.` prefix):

  conv1, bn1, layer1.0, layer2.0, layer3.0          stem (7x7/2 conv, three bottlenecks)
  hg.{s}.hg.{level}.{branch}.{block}                hourglass of stack s; level depth-1 is the
                                                    outermost; branch 0 skip, 1 down, 2 low,
                                                    3 bottom (level 0 only)
  res.{s}.{block}, fc.{s}.0 (conv), fc.{s}.1 (bn)   after the hourglass
  score.{s}, fc_.{s}, score_.{s}                    heat maps and their re-injection

Each bottleneck has bn1, conv1 (1x1), bn2, conv2 (3x3), bn3, conv3 (1x1) and, where its width
changes, downsample.0 (1x1). Generalised here to any `features` (the port's 256), `depth` (the
port's 4) and `num_joints`, so tests can build tiny ones. Images [N,3,H,W] -> list of
`num_stacks` heat maps [N,num_joints,H/4,W/4]; the same function as
`jaxpose.models.hourglass.StackedHourglass`.

CPM: the released 6-stage network (`pose_deploy_centerMap.prototxt`), layer for layer as
`jaxpose.models.cpm.CPM` and with the same hyperparameter names, so `CPM(**config.model)`
(less `name`) has that module's parameter count. Caffe's ceil-rounded pools are PyTorch's
`ceil_mode=True` (both overhang the bottom / right edge only); the centre map's 9x9/8 average
pool divides each clipped window by its valid pixels (`count_include_pad=False`), as
`jaxpose.models.layers.avg_pool_ceil` does. Images [N,3,H,W] and centre maps [N,1,H,W] -> list
of `num_stages` belief maps [N,num_parts,H/8,W/8]. jaxpose's CPU options (`num_pools`,
`init_scheme`, `batch_norm`) are here too.

  python benchmarks/torch_models.py      # parameter counts of the released-size models
"""

import collections

import torch
from torch import nn
from torch.nn import functional as F


class Bottleneck(nn.Module):
  """Pre-activation bottleneck: [N,inplanes,H,W] -> [N,2*planes,H,W]."""

  def __init__(self, inplanes: int, planes: int):
    super().__init__()
    out = 2 * planes
    self.bn1 = nn.BatchNorm2d(inplanes)
    self.conv1 = nn.Conv2d(inplanes, planes, 1)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, padding=1)
    self.bn3 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, out, 1)
    self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1)) if inplanes != out else None

  def forward(self, x):
    y = self.conv1(F.relu(self.bn1(x)))
    y = self.conv2(F.relu(self.bn2(y)))
    y = self.conv3(F.relu(self.bn3(y)))
    return y + (x if self.downsample is None else self.downsample(x))


def _residuals(inplanes: int, planes: int, num_blocks: int) -> nn.Sequential:
  """`num_blocks` bottlenecks, the first from `inplanes` channels, all to 2*planes."""
  return nn.Sequential(*[Bottleneck(inplanes if i == 0 else 2 * planes, planes)
                         for i in range(num_blocks)])


class Hourglass(nn.Module):
  """One hourglass: [N,2*planes,H,W] -> same; H, W divisible by 2**depth."""

  def __init__(self, planes: int, depth: int, num_blocks: int):
    super().__init__()
    self.depth = depth
    f = 2 * planes
    # Level i has branches skip, down, low; the innermost level (0) also the bottom one.
    self.hg = nn.ModuleList(
        nn.ModuleList(_residuals(f, planes, num_blocks) for _ in range(4 if i == 0 else 3))
        for i in range(depth))

  def _level(self, n: int, x):
    branches = self.hg[n - 1]
    up = branches[0](x)
    low = branches[1](F.max_pool2d(x, 2, stride=2))
    low = self._level(n - 1, low) if n > 1 else branches[3](low)
    low = branches[2](low)
    return up + F.interpolate(low, scale_factor=2, mode="nearest")

  def forward(self, x):
    return self._level(self.depth, x)


class StackedHourglass(nn.Module):
  """Images [N,3,H,W] -> list of `num_stacks` heat maps [N,num_joints,H/4,W/4]."""

  def __init__(self, num_stacks: int = 8, num_joints: int = 16, features: int = 256,
               depth: int = 4, num_blocks: int = 1):
    super().__init__()
    self.num_stacks = num_stacks
    f, planes = features, features // 2
    self.conv1 = nn.Conv2d(3, f // 4, 7, stride=2, padding=3)
    self.bn1 = nn.BatchNorm2d(f // 4)
    self.layer1 = _residuals(f // 4, f // 4, 1)  # -> f/2 channels
    self.layer2 = _residuals(f // 2, f // 2, 1)  # -> f (the port passes its running width)
    self.layer3 = _residuals(f, planes, 1)  # -> f
    self.hg = nn.ModuleList(Hourglass(planes, depth, num_blocks) for _ in range(num_stacks))
    self.res = nn.ModuleList(_residuals(f, planes, num_blocks) for _ in range(num_stacks))
    self.fc = nn.ModuleList(
        nn.Sequential(nn.Conv2d(f, f, 1), nn.BatchNorm2d(f), nn.ReLU())
        for _ in range(num_stacks))
    self.score = nn.ModuleList(nn.Conv2d(f, num_joints, 1) for _ in range(num_stacks))
    self.fc_ = nn.ModuleList(nn.Conv2d(f, f, 1) for _ in range(num_stacks - 1))
    self.score_ = nn.ModuleList(nn.Conv2d(num_joints, f, 1) for _ in range(num_stacks - 1))

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = F.max_pool2d(self.layer1(x), 2, stride=2)
    x = self.layer3(self.layer2(x))
    out = []
    for i in range(self.num_stacks):
      y = self.fc[i](self.res[i](self.hg[i](x)))
      score = self.score[i](y)
      out.append(score)
      if i < self.num_stacks - 1:
        x = x + self.fc_[i](y) + self.score_[i](score)
    return out


def _conv(inplanes: int, features: int, kernel: int, bias: bool = True) -> nn.Conv2d:
  """A "same"-padded convolution (odd kernels), as `jaxpose.models.cpm._conv`."""
  return nn.Conv2d(inplanes, features, kernel, padding=kernel // 2, bias=bias)


def _conv_relu(inplanes: int, features: int, kernel: int, batch_norm: bool) -> nn.Sequential:
  """conv, ReLU; with `batch_norm`, a bias-free conv, BatchNorm, ReLU (jaxpose's option)."""
  layers = [("conv", _conv(inplanes, features, kernel, bias=not batch_norm))]
  if batch_norm:
    layers.append(("bn", nn.BatchNorm2d(features)))
  return nn.Sequential(collections.OrderedDict(layers + [("relu", nn.ReLU())]))


def _cpm_trunk(features: int, kernel: int, num_pools: int, batch_norm: bool) -> nn.Sequential:
  """Three conv+ReLU, the first `num_pools` each followed by Caffe's ceil-rounded 3x3/2 max
  pool: [N,3,H,W] -> [N,features,H/s,W/s], s = 2**num_pools."""
  layers = []
  for i in range(1, 4):
    layers.append((f"conv{i}", _conv_relu(3 if i == 1 else features, features, kernel,
                                          batch_norm)))
    if i <= num_pools:
      layers.append((f"pool{i}", nn.MaxPool2d(3, 2, ceil_mode=True)))
  return nn.Sequential(collections.OrderedDict(layers))


class CPMStage1(nn.Module):
  """Stage 1 with its own image trunk: images [N,3,H,W] -> beliefs [N,num_parts,H/s,W/s]."""

  def __init__(self, num_parts, trunk_features, stage_features, head_features, big_kernel,
               feature_kernel, dropout_rate, num_pools, batch_norm):
    super().__init__()
    self.trunk = _cpm_trunk(trunk_features, big_kernel, num_pools, batch_norm)
    self.conv4 = _conv_relu(trunk_features, stage_features, feature_kernel, batch_norm)
    self.conv5 = _conv_relu(stage_features, head_features, big_kernel, batch_norm)
    self.conv6 = _conv_relu(head_features, head_features, 1, batch_norm)
    self.conv7 = _conv(head_features, num_parts, 1)
    self.drop = nn.Dropout(dropout_rate)

  def forward(self, x):
    x = self.conv4(self.trunk(x))
    x = self.drop(self.conv5(x))
    return self.conv7(self.drop(self.conv6(x)))


class CPMStage(nn.Module):
  """Stage t >= 2: (trunk features, previous beliefs, pooled centre map) -> beliefs, all at
  the trunk's stride; concatenated in the release's order."""

  def __init__(self, num_parts, trunk_features, stage_features, mconv_features, stage_kernel,
               feature_kernel, batch_norm):
    super().__init__()
    self.conv = _conv_relu(trunk_features, stage_features, feature_kernel, batch_norm)
    width = stage_features + num_parts + 1
    self.mconv1 = _conv_relu(width, mconv_features, stage_kernel, batch_norm)
    self.mconv2 = _conv_relu(mconv_features, mconv_features, stage_kernel, batch_norm)
    self.mconv3 = _conv_relu(mconv_features, mconv_features, stage_kernel, batch_norm)
    self.mconv4 = _conv_relu(mconv_features, mconv_features, 1, batch_norm)
    self.mconv5 = _conv(mconv_features, num_parts, 1)

  def forward(self, features, beliefs, center):
    x = torch.cat([self.conv(features), beliefs, center], dim=1)
    for layer in (self.mconv1, self.mconv2, self.mconv3, self.mconv4, self.mconv5):
      x = layer(x)
    return x


def _init_cpm(model: nn.Module, scheme: str) -> None:
  """Kernels as `jaxpose.models.cpm.INIT_SCHEMES` (the release's N(0, 0.01), or He / LeCun
  normal, untruncated here), biases 0; BatchNorm as PyTorch's default (1, 0)."""
  if scheme not in ("release", "he", "lecun"):
    raise ValueError(f"init_scheme={scheme!r}; expected 'release', 'he' or 'lecun'.")
  for m in model.modules():
    if isinstance(m, nn.Conv2d):
      if scheme == "release":
        nn.init.normal_(m.weight, std=0.01)
      else:
        nn.init.kaiming_normal_(m.weight, nonlinearity="relu" if scheme == "he" else "linear")
      if m.bias is not None:
        nn.init.zeros_(m.bias)


class CPM(nn.Module):
  """(images [N,3,H,W], centre maps [N,1,H,W]) -> list of `num_stages` belief maps
  [N,num_parts,H/s,W/s], s = 2**num_pools. Defaults: the released MPI / LSP model
  (31,219,866 parameters); `num_pools`, `init_scheme` and `batch_norm` are jaxpose's options
  for short CPU runs."""

  def __init__(self, num_stages: int = 6, num_parts: int = 15, trunk_features: int = 128,
               stage_features: int = 32, head_features: int = 512, mconv_features: int = 128,
               big_kernel: int = 9, stage_kernel: int = 11, feature_kernel: int = 5,
               dropout_rate: float = 0.5, num_pools: int = 3, init_scheme: str = "release",
               batch_norm: bool = False):
    super().__init__()
    self.stage1 = CPMStage1(num_parts, trunk_features, stage_features, head_features,
                            big_kernel, feature_kernel, dropout_rate, num_pools, batch_norm)
    self.trunk2 = (_cpm_trunk(trunk_features, big_kernel, num_pools, batch_norm)
                   if num_stages > 1 else None)
    self.stages = nn.ModuleList(
        CPMStage(num_parts, trunk_features, stage_features, mconv_features, stage_kernel,
                 feature_kernel, batch_norm) for _ in range(num_stages - 1))
    stride = 2**num_pools  # Caffe's 9x9/8 at the release's stride 8.
    self.center_pool = nn.AvgPool2d(stride + 1, stride, ceil_mode=True,
                                    count_include_pad=False)
    _init_cpm(self, init_scheme)

  def forward(self, images, center_map):
    beliefs = self.stage1(images)
    outputs = [beliefs]
    if self.stages:
      features, center = self.trunk2(images), self.center_pool(center_map)
      for stage in self.stages:
        beliefs = stage(features, beliefs, center)
        outputs.append(beliefs)
    return outputs


def num_params(model: nn.Module) -> int:
  """Trainable parameters (BatchNorm running statistics excluded)."""
  return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
  for stacks in (2, 8):
    print(f"hg_s{stacks}_b1: {num_params(StackedHourglass(num_stacks=stacks)):,} parameters")
  print(f"CPM, 6 stages, 14+1 parts: {num_params(CPM()):,} parameters")
  print(f"CPM, 4 stages, 9+1 parts (FLIC): {num_params(CPM(num_stages=4, num_parts=10)):,}")
