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

  python benchmarks/torch_models.py      # parameter counts of the 2- and 8-stack models
"""

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


def num_params(model: nn.Module) -> int:
  """Trainable parameters (BatchNorm running statistics excluded)."""
  return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
  for stacks in (2, 8):
    print(f"hg_s{stacks}_b1: {num_params(StackedHourglass(num_stacks=stacks)):,} parameters")
