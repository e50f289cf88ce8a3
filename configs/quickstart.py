r"""Quickstart: a small Stacked Hourglass on the built-in synthetic people, sized for a CPU.

  python train.py --config configs/quickstart.py --workdir runs/qs
  python eval.py --ckpt runs/qs

1 stack, 64 features, 128x128 input, 32x32 heat maps. Unlike the paper configs it trains with a
per-joint softmax cross-entropy on the Gaussian targets and Adam: on CPU, from scratch, plain MSE
on sigma-1 targets sits near zero for the first ~500 steps while cross-entropy learns at once.
Everything else (pipeline, augmentation, flip test, decoding, metric) is the paper's.
`get_config("tiny")` is a seconds-long version for smoke tests.
"""

from configs import hourglass_mpii


def get_config(arg: str | None = None):
  c = hourglass_mpii.get_config()
  c.model.num_stacks = 1
  c.model.features = 64
  c.model.depth = 3
  c.dataset.name = "synthetic"
  c.input_size = 128
  c.output_size = 32
  c.sigma = 1.0
  c.loss = "softmax_ce"
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 2e-3
  c.optimizer.warmup_steps = 100
  c.optimizer.decay_epochs = (4.0,)
  c.optimizer.decay_factor = 0.2
  c.batch_size = 16
  c.eval_batch_size = 64
  c.num_epochs = 5
  c.log_every_steps = 50
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 500
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
