r"""Tompson et al. (NIPS 2014) on MPII's 16 joints: configs/tompson_flic.py's model and phases.

  python train.py --config configs/tompson_mpii.py --workdir runs/tompson_mpii

MPII leaderboard (test PCKh@0.5): Total 79.6 (Head 95.8, Shoulder 90.3, Elbow 80.5, Wrist 74.3,
Hip 77.6, Knee 69.7, Ankle 62.8).
"""

from configs import tompson_flic


def get_config(arg: str | None = None):
  del arg
  return tompson_flic.get_config("mpii")
