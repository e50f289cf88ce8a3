r"""Convolutional Pose Machines, 6 stages, on MPII's 16 joints + background (368x368).

  python train.py --config configs/cpm_mpii.py --workdir runs/cpm_mpii

Paper: MPII test PCKh@0.5 88.5 (trained on MPII + LSP), 87.95 on MPII alone. The released MPI
model predicts the 14 LSP-order joints (no pelvis, no thorax); this config keeps MPII's 16.
Recipe as configs/cpm_lsp.py.
"""

from configs import cpm_lsp


def get_config(arg: str | None = None):
  del arg
  return cpm_lsp.get_config("mpii")
