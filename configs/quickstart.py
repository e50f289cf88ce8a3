r"""Quickstart: a small Stacked Hourglass on the built-in synthetic people, sized for a CPU.

  python train.py --config configs/quickstart.py --workdir runs/qs
  python eval.py --ckpt runs/qs

1 stack, 48 features, depth 3, 128x128 input, 32x32 heat maps (sigma 1), batch 8, 3400 steps:
about 9-10 minutes on a 2-core CPU. Unlike the paper configs it trains with a per-joint softmax
cross-entropy on the Gaussian targets and Adam (1.5e-3, warm-up, cosine decay): on CPU, from
scratch, plain MSE on sigma-1 targets sits near zero for the first ~500 steps while
cross-entropy learns at once. Augmentation is flips, +-15% scale and colour jitter only (the
synthetic people are already rotated in the data). Pipeline, flip test, decoding and metric are
the paper's.
`get_config("tiny")` is a seconds-long version for smoke tests.
"""

from configs import hourglass_mpii


def get_config(arg: str | None = None):
  c = hourglass_mpii.get_config()
  c.model.num_stacks = 1
  c.model.features = 48
  c.model.depth = 3
  c.dataset.name = "synthetic"
  c.dataset.precrop = False  # The synthetic images are already person-sized ...
  c.augment_on_device = False  # ... and the CPU is the device.
  c.input_size = 128
  c.output_size = 32
  c.sigma = 1.0
  c.loss = "softmax_ce"
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1.5e-3
  c.optimizer.warmup_steps = 100
  c.optimizer.schedule = "cosine"
  c.batch_size = 8  # As many images/s as 16 on a CPU, twice the updates.
  c.eval_batch_size = 64
  # The synthetic people are already rotated +-30 deg in the data: no rotation on top, and a
  # milder scale jitter, so ten minutes of CPU go to the validation distribution.
  c.augment.rotation_prob = 0.0
  c.augment.scale = 0.15
  c.augment.distribution = "uniform"  # Scale uniform in 1 +- 0.15 (not the reference's normal).
  c.num_train_steps = 3400
  c.log_every_steps = 100
  c.eval_every_steps = 425
  c.checkpoint_every_steps = 425
  if arg == "tiny":
    c.model.features = 16
    c.model.depth = 2
    c.dataset.config = "tiny"
    c.input_size = 64
    c.output_size = 16
    c.batch_size = 8
    c.eval_batch_size = 8
    c.num_epochs = 1
    c.num_train_steps = 6
    c.log_every_steps = 2
    c.eval_every_steps = 3
    c.checkpoint_every_steps = 3
  elif arg:
    raise ValueError(f"Unknown quickstart variant {arg!r}; use 'tiny' or nothing.")
  return c
