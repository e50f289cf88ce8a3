r"""DeepPose's 3-stage cascade on FLIC: configs/deeppose_lsp.py's model and recipe.

  python train.py --config configs/deeppose_flic.py --workdir runs/deeppose_flic
"""

from configs import deeppose_lsp


def get_config(arg: str | None = None):
  del arg
  return deeppose_lsp.get_config("flic")
