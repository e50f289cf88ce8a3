r"""Stacked Hourglass, 8 stacks, on LSP's own 14 joints: the MPII recipe on Leeds Sports Pose.

  python -m jaxpose.data.prepare lsp --manual_dir ~/data/lsp   # once (docs/DATA.md)
  python train.py --config configs/hourglass_lsp.py --workdir runs/hg8_lsp

Train on the 1000 LSP train people (`get_config("extended")`: plus the 10000 of LSP-extended),
evaluate on the 1000 test people. Centre and scale come from the joints' box (lsp.py), the
normaliser is the torso size. The hourglass paper reports no LSP number of its own; the
usual LSP protocol (MPII + LSP-extended + LSP train, PCK@0.2) is a different recipe.
"""

import ml_collections

from configs import hourglass_mpii


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """arg: "extended" adds LSP-extended to the train split; otherwise the LSP config name."""
  c = hourglass_mpii.get_config()
  c.dataset.name = "lsp"
  c.dataset.config = arg or "default"
  c.dataset.skeleton = "lsp"
  c.dataset.train_split = "train"
  c.dataset.eval_split = "test"
  c.dataset.manual_dir = ""  # Default: DATA_DIR/downloads/manual/lsp.
  return c
