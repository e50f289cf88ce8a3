r"""DeepPose (Toshev & Szegedy, CVPR 2014) on LSP: the AlexNet-style regressor at 220x220 with
ungrouped convolutions (58,396,060 parameters per stage) and its 3-stage cascade.

  python -m jaxpose.data.prepare lsp --manual_dir ~/data/lsp   # once (docs/DATA.md)
  python train.py --config configs/deeppose_lsp.py --workdir runs/deeppose_lsp
  python eval.py --ckpt runs/deeppose_lsp      # a table after each stage

Paper (LSP, strict PCP, 3 stages): upper legs 0.77, lower legs 0.71, upper arms 0.56, lower
arms 0.38, mean 0.61. Training is stage by stage (one phase each): stage s >= 2 learns on
simulated predictions, truth + d, d ~ N(mean, cov) of stage s-1's errors on the training set.
The paper trained with DistBelief SGD and does not give its rate, batch or epochs; this follows
the public Chainer port (mitmul/deeppose): Adam at 1e-3, batch 128, 100 epochs for stage 1,
dropout 0.6, flips, rotation, zoom 1 +- 0.2. The refinement boxes' sigma (patch side / pose
diameter) is not recovered from the paper: 1.0 here. The pipeline delivers the person's box at
440 px: stage 1 sees it averaged down to 220, the refinement patches are cut at the full 440
(`model.stage1_size`). `get_config("flic")` / `("mpii")`.
"""

import ml_collections

from configs import base

TRAIN_PEOPLE = {"lsp": 1000, "flic": 3987, "mpii": 22246}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = base.get_config()
  c.model = ml_collections.ConfigDict(dict(
      name="deeppose", num_stages=3, box_factor=1.0, dropout_rate=0.6))
  data = arg or "lsp"
  if data not in TRAIN_PEOPLE:
    raise ValueError(f"Unknown deeppose variant {arg!r}; use 'lsp', 'flic' or 'mpii'.")
  c.dataset.name = c.dataset.skeleton = data
  c.dataset.eval_split = "validation" if data == "mpii" else "test"
  # Stage 1 sees the person's box at 220 px; the refinement stages cut their 220 px patches
  # from the same box at twice the resolution (the paper crops them from the original image:
  # "subsequent pose regressors see higher resolution images").
  c.input_size = 440
  c.model.stage1_size = 220
  c.augment.update(rotation=10.0, rotation_prob=1.0, scale=0.2, flip=True, color=0.0)
  c.optimizer.update(name="adam", learning_rate=1e-3, schedule="constant", warmup_steps=0)
  c.batch_size = 128
  c.eval_batch_size = 128
  epoch = max(1, TRAIN_PEOPLE[data] // c.batch_size)
  c.phases = (("stage1", 100 * epoch, "stage1"), ("stage2", 50 * epoch, "stage2"),
              ("stage3", 50 * epoch, "stage3"))
  c.eval_every_steps = 10 * epoch
  c.checkpoint_every_steps = 10 * epoch
  return c
