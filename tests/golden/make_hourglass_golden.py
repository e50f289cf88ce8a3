r"""Writes the PyTorch golden files that tests/test_convert.py and tests/models/test_layers.py
read without torch (needs torch: requirements-torch.txt).

  python tests/golden/make_hourglass_golden.py

Tiny Stacked Hourglasses of `benchmarks/torch_models.py` (features 16, depth 2, 5 joints) with
random weights, BatchNorm affine parameters and running statistics, saved as pytorch-pose saves
its checkpoints ({"epoch", "arch", "state_dict", "best_acc", "optimizer"}, the optimizer with
RMSProp state) in the three ways released files come: zip format, legacy format, and with
DataParallel's `module.` key prefix. `torch_reference.npz` holds the input (NHWC), each
model's heat maps in eval mode (NHWC, one array per stack), and one training-mode step of
`torch.nn.BatchNorm2d` (input, affine parameters, running statistics before and after, output).
"""

import collections
import copy
import os
import pathlib
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from benchmarks import torch_models  # noqa: E402  pylint: disable=g-import-not-at-top

GOLDEN_DIR = pathlib.Path(__file__).resolve().parent
SMALL = dict(num_joints=5, features=16, depth=2)
INPUT_SHAPE = (2, 3, 32, 32)  # NCHW.
# File -> (number of stacks, format). Both 2-stack files hold the same model.
FILES = {"hg_s1_zip.pth.tar": (1, "zip"), "hg_s2_legacy.pth.tar": (2, "legacy"),
         "hg_s2_module.pth.tar": (2, "module")}
REFERENCE = "torch_reference.npz"


def random_hourglass(num_stacks: int, seed: int) -> torch_models.StackedHourglass:
  """A tiny hourglass in eval mode: PyTorch's default initialisation for convolutions, random
  BatchNorm scales, biases and running statistics (so each of them matters to the output)."""
  torch.manual_seed(seed)
  model = torch_models.StackedHourglass(num_stacks=num_stacks, **SMALL)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.5, 0.5)
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 2.0)
        m.num_batches_tracked.fill_(7)
  return model.eval()


def heatmaps(model: torch.nn.Module, x_nchw: np.ndarray) -> list[np.ndarray]:
  """Every stack's output in eval mode, NHWC."""
  with torch.no_grad():
    outs = model(torch.from_numpy(x_nchw))
  return [o.numpy().transpose(0, 2, 3, 1) for o in outs]


def pytorch_pose_checkpoint(model: torch.nn.Module, prefix: str = "", step: bool = False
                            ) -> dict:
  """A dict as pytorch-pose's training script saves it; with `step`, the optimizer holds the
  state of one RMSProp step (tensors the converter must skip)."""
  trained = copy.deepcopy(model).train()
  optimizer = torch.optim.RMSprop(trained.parameters(), lr=2.5e-4)
  if step:
    loss = sum(o.square().mean() for o in trained(torch.randn(2, *INPUT_SHAPE[1:])))
    loss.backward()
    optimizer.step()
  state = collections.OrderedDict((prefix + k, v) for k, v in model.state_dict().items())
  return {"epoch": 3, "arch": "hg", "state_dict": state, "best_acc": torch.tensor(0.25),
          "optimizer": optimizer.state_dict()}


def save(model: torch.nn.Module, path: pathlib.Path, fmt: str) -> None:
  """Saves `model` as a pytorch-pose checkpoint: fmt "zip", "legacy" (with optimizer state, as
  the released files) or "module" (zip with DataParallel's `module.` prefix). Zip files keep
  the optimizer stateless: each tensor costs ~200 bytes of zip headers there."""
  ckpt = pytorch_pose_checkpoint(model, "module." if fmt == "module" else "",
                                 step=fmt == "legacy")
  torch.save(ckpt, path, _use_new_zipfile_serialization=fmt != "legacy")


def batchnorm_step(seed: int = 0) -> dict[str, np.ndarray]:
  """One training-mode forward of BatchNorm2d on a [6,4,4,C] batch (the hourglass's bottom at
  the paper's batch size), NHWC, with its running statistics before and after."""
  torch.manual_seed(seed)
  bn = torch.nn.BatchNorm2d(8).train()
  with torch.no_grad():
    bn.weight.uniform_(0.5, 1.5)
    bn.bias.uniform_(-0.5, 0.5)
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
  before = {"mean0": bn.running_mean.clone().numpy(), "var0": bn.running_var.clone().numpy()}
  x = torch.randn(6, 8, 4, 4) * 2 + 1
  with torch.no_grad():
    y = bn(x)
  return {"x": x.numpy().transpose(0, 2, 3, 1), "scale": bn.weight.detach().numpy(),
          "bias": bn.bias.detach().numpy(), **before, "y": y.numpy().transpose(0, 2, 3, 1),
          "mean1": bn.running_mean.numpy(), "var1": bn.running_var.numpy()}


def main() -> None:
  x = np.random.default_rng(0).standard_normal(INPUT_SHAPE).astype(np.float32)
  reference = {"x": x.transpose(0, 2, 3, 1)}
  models = {n: random_hourglass(n, seed=n) for n in sorted({s for s, _ in FILES.values()})}
  for n, model in models.items():
    for i, out in enumerate(heatmaps(model, x)):
      reference[f"s{n}_out{i}"] = out
  for name, (n, fmt) in FILES.items():
    save(models[n], GOLDEN_DIR / name, fmt)
  reference.update({f"bn_{k}": v for k, v in batchnorm_step().items()})
  np.savez_compressed(GOLDEN_DIR / REFERENCE, **reference)
  for name in [*FILES, REFERENCE]:
    print(f"{GOLDEN_DIR / name}: {(GOLDEN_DIR / name).stat().st_size:,} bytes")


if __name__ == "__main__":
  main()
