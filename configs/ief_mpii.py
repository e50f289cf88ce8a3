r"""Iterative Error Feedback (Carreira et al., CVPR 2016) on MPII: GoogLeNet (Inception v1
layout, no auxiliary heads) on the image plus 17 rendered maps (16 joints and the fixed marking
point at the crop centre): 20 input channels, 32 outputs, 6,059,664 parameters.

  python train.py --config configs/ief_mpii.py --workdir runs/ief_mpii
  python eval.py --ckpt runs/ief_mpii          # a table after each of the 4 iterations

Paper: MPII test PCKh@0.5 81.3. Corrections are bounded (each joint moves at most L = 20 px of
the 224 crop toward the truth); y_0 is the training set's mean pose; T = 4 iterations at test.
Training is Fixed Path Consolidation, one phase per step: phase t feeds poses from steps
0..t (jaxpose/families/regression.py says how). The paper's optimiser settings are not in its
released code; SGD with momentum 0.9 at 1e-3, batch 64, here (our choice).
"""

import ml_collections

from configs import base

EPOCH = 22246 // 64


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = base.get_config()
  # Fixed path consolidation as the paper's: phase t's path step s runs the network as phase
  # s - 1 left it, frozen (jaxpose/families/regression.py).
  c.model = ml_collections.ConfigDict(dict(name="ief", num_iterations=4, fixed_path="frozen"))
  c.input_size = 224
  c.augment.update(rotation=30.0, rotation_prob=0.6, scale=0.25, flip=True, color=0.2)
  c.optimizer.update(name="sgd", learning_rate=1e-3, momentum=0.9, weight_decay=5e-4,
                     schedule="cosine", warmup_steps=500)
  c.batch_size = 64
  c.eval_batch_size = 64
  c.phases = tuple((f"step{t}", 10 * EPOCH, "*") for t in range(1, 5))
  c.eval_every_steps = 5 * EPOCH
  c.checkpoint_every_steps = 5 * EPOCH
  return c
