r"""Stacked Hourglass, 8 stacks, on MPII (Newell et al. 2016): the paper's recipe.

  python train.py --config configs/hourglass_mpii.py --workdir runs/hg8_mpii
  python eval.py --ckpt runs/hg8_mpii

Paper: PCKh@0.5 on the MPII test set 90.9 (Head 98.2, Shoulder 96.3, Elbow 91.2, Wrist 87.1,
Hip 90.1, Knee 87.4, Ankle 83.6). 256x256 input, 64x64 output heat maps (sigma 1), batch 6,
RMSProp at 2.5e-4, MSE on every stack's heat maps. Augmentation: rotation +-30 deg, scale
0.75-1.25, flips, colour jitter; drawn as the PyTorch port (bearpaw/pytorch-pose) draws them:
with probability 0.6 a rotation of 30 deg x N(0, 1) clipped to +-60, a scale factor
1 + 0.25 N(0, 1) clipped to [0.75, 1.25], gains uniform in [0.8, 1.2]. The epoch count and
step-wise schedule (x0.1 at epochs 60 and 90 of 100) follow the same port, whose parameter count
this model matches; the paper only says the rate is dropped once validation accuracy plateaus.

`get_config("2")` gives the 2-stack variant (configs/hourglass2_mpii.py).
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """arg: number of stacks (default 8)."""
  c = base.get_config()
  c.model = ml_collections.ConfigDict(dict(
      name="hourglass", num_stacks=int(arg or 8), features=256, depth=4, num_blocks=1,
      init_scheme="pytorch"))  # The reference's initialisation (kaiming-uniform a=sqrt(5)).
  # The PyTorch reference's JointsMSELoss: 0.5 x the mean squared error, summed over stacks.
  c.loss = "mse"
  c.loss_scale = 0.5
  # The reference's draws: scale 1 + 0.25 N(0,1) and rotation 30 N(0,1) (with probability 0.6),
  # clipped to [0.75, 1.25] and +-60 deg (pipeline.Augment). The pre-crop then keeps 609x609.
  c.augment.distribution = "normal_clipped"
  # The step as a program per kind of segment (the stem, a middle stack, the last stack;
  # steps.SegmentedStep): 8 stacks compile and read back what 2 do. Measured on 2 cores
  # (benchmarks/models.py, docs/performance_log.md): 8 stacks' first step 0.80x cold, 0.73x
  # warm, the step 0.96x (then 0.93-0.94x with its residuals' buffers kept between steps, its
  # peak RSS 0.82x); 2 stacks' 1.22x cold, 1.06x warm, the step 1.06-1.12x, so that config
  # keeps its program.
  # Measured on CPUs only: on a GPU or TPU, --config.segmented_step=False gives the two
  # programs if the recomputed BatchNorm-ReLU inside the segments costs more than it saves.
  c.segmented_step = c.model.num_stacks >= 8
  return c
