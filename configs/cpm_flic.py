r"""Convolutional Pose Machines, the released FLIC model: 4 stages, 9 joints + background
(shoulders, elbows, wrists, hips, head, in the release's order), 21,323,816 parameters.

  python train.py --config configs/cpm_flic.py --workdir runs/cpm_flic

Paper: FLIC PCK@0.2 Elbow 97.59, Wrist 95.03. Recipe as configs/cpm_lsp.py.
"""

from configs import cpm_lsp


def get_config(arg: str | None = None):
  del arg
  return cpm_lsp.get_config("flic")
