r"""DeepPose's 3-stage cascade on MPII: configs/deeppose_lsp.py's model and recipe.

  python train.py --config configs/deeppose_mpii.py --workdir runs/deeppose_mpii
"""

from configs import deeppose_lsp


def get_config(arg: str | None = None):
  del arg
  return deeppose_lsp.get_config("mpii")
