r"""Stacked Hourglass, 2 stacks, on MPII (6,730,912 parameters).

  python train.py --config configs/hourglass2_mpii.py --workdir runs/hg2_mpii

Same recipe as configs/hourglass_mpii.py. Newell et al. report the 2-stack model about 1-2
points of validation PCKh below the 8-stack one (their Fig. 8 / ablation on stacks).
"""

from configs import hourglass_mpii


def get_config(arg: str | None = None):
  del arg
  return hourglass_mpii.get_config("2")
