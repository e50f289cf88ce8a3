r"""Tompson, Jain, LeCun, Bregler (NIPS 2014): the multi-resolution part detector and its
spatial model, on FLIC, in the paper's three training phases.

  python -m jaxpose.data.prepare flic --manual_dir ~/data/flic   # once (docs/DATA.md)
  python train.py --config configs/tompson_flic.py --workdir runs/tompson_flic

The paper's FLIC setting feeds 360x240 frames (FLIC's 720x480 halved) to get 90x60 heat maps;
jaxpose's pipeline cuts square person crops, so this is a 256x256 crop with 64x64 maps at
stride 4 (jaxpose/models/tompson.py says what the paper leaves open and what is chosen).
Phases: the detector alone, then the spatial model on the frozen detector, then both jointly.
The paper trains the detector with an MSE against Gaussian maps; the spatial model's log
beliefs train with a spatial softmax here (the third-party reimplementation's choice). Its
optimiser and schedule are not in the paper: Adam at 1e-3 with a cosine decay, as the
reimplementation (which halves at 70/80/90%), batch 14.
"""

import ml_collections

from configs import base

EPOCH = 3987 // 14  # FLIC's train split at batch 14.


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = base.get_config()
  c.model = ml_collections.ConfigDict(dict(name="tompson", output_stride=4, spatial_model=True))
  c.dataset.name = c.dataset.skeleton = "flic"
  c.dataset.eval_split = "test"
  c.input_size = 256
  c.output_size = 64
  c.sigma = 1.5
  c.loss = "mse"
  c.augment.update(rotation=10.0, rotation_prob=1.0, scale=0.1, flip=True, color=0.2)
  c.optimizer.update(name="adam", learning_rate=1e-3, schedule="cosine", warmup_steps=0)
  c.batch_size = 14
  c.eval_batch_size = 28
  c.phases = (("detector", 40 * EPOCH, "detector"), ("spatial", 10 * EPOCH, "spatial"),
              ("joint", 10 * EPOCH, "*"))
  c.eval_every_steps = 5 * EPOCH
  c.checkpoint_every_steps = 5 * EPOCH
  if arg == "mpii":
    c.dataset.name = c.dataset.skeleton = "mpii"
    c.dataset.eval_split = "validation"
    c.eval_batch_size = 42
  elif arg:
    raise ValueError(f"Unknown tompson_flic variant {arg!r}; use 'mpii' or nothing.")
  return c
