r"""Convolutional Pose Machines (Wei et al., CVPR 2016), the released original 6-stage network
on LSP: 14 joints + background, 368x368, 31,219,866 parameters.

  python -m jaxpose.data.prepare lsp --manual_dir ~/data/lsp   # once (docs/DATA.md)
  python train.py --config configs/cpm_lsp.py --workdir runs/cpm_lsp
  python eval.py --ckpt runs/cpm_lsp

Paper (LSP PCK@0.2, person-centric): 84.3 trained on LSP only, 90.5 with MPII added.
The released Caffe recipe (training/genProto.py): SGD momentum 0.9, base lr 8e-5 with stage-1
layers at 5x (weights) / 10x (biases) and other biases at 2x, weight decay 5e-4 except on
biases, batch 16, lr x0.333 every 136,106 iterations (max_iter 600,000); every stage supervised
by Caffe's Euclidean loss (sum of squares / 2N), targets Gaussians of sigma 7 px in the 368
frame with background = 1 - max over parts; augmentation scale 0.7-1.3, rotation +-40 deg.
Not in the release's parameters and chosen here: horizontal flips (on; the data layer's default
is not recorded) and no colour jitter. `get_config("mpii")` / `("flic")` are cpm_mpii / cpm_flic.
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = base.get_config()
  c.model = ml_collections.ConfigDict(dict(name="cpm", num_stages=6))
  c.dataset.name = c.dataset.skeleton = "lsp"
  c.dataset.eval_split = "test"
  c.input_size = 368
  c.output_size = 46
  c.sigma = 7.0 / 8.0  # 7 px in the 368 frame, in 46x46 belief-map pixels.
  c.loss = "euclidean"
  c.augment.update(rotation=40.0, rotation_prob=1.0, scale=0.3, flip=True, color=0.0)
  c.optimizer.update(name="sgd", learning_rate=8e-5, momentum=0.9, weight_decay=5e-4,
                     schedule="step", decay_steps=136_106, decay_factor=0.333, warmup_steps=0)
  c.optimizer.caffe_lr_mult = True  # The release: stage 1 x5 / x10, biases x2, no decay on biases.
  c.batch_size = 16
  c.eval_batch_size = 32
  c.num_train_steps = 600_000
  c.eval_every_steps = 10_000
  c.checkpoint_every_steps = 10_000
  if arg == "mpii":
    c.dataset.name = c.dataset.skeleton = "mpii"
    c.dataset.eval_split = "validation"
  elif arg == "flic":  # The release's FLIC model: 9 joints (+ background), 4 stages.
    c.model.num_stages = 4
    c.dataset.name, c.dataset.skeleton = "flic", "flic9"
    c.dataset.eval_split = "test"
  elif arg:
    raise ValueError(f"Unknown cpm_lsp variant {arg!r}; use 'mpii', 'flic' or nothing.")
  return c
