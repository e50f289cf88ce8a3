r"""Stacked Hourglass, 8 stacks, on MPII (Newell et al. 2016): the paper's recipe.

  python train.py --config configs/hourglass_mpii.py --workdir runs/hg8_mpii
  python eval.py --ckpt runs/hg8_mpii

Paper: PCKh@0.5 on the MPII test set 90.9 (Head 98.2, Shoulder 96.3, Elbow 91.2, Wrist 87.1,
Hip 90.1, Knee 87.4, Ankle 83.6). 256x256 input, 64x64 output heat maps (sigma 1), batch 6,
RMSProp at 2.5e-4, MSE on every stack's heat maps. Augmentation: rotation +-30 deg, scale
0.75-1.25, flips, colour jitter; drawn as the PyTorch port (bearpaw/pytorch-pose) draws them:
with probability 0.6 a rotation of 30 deg x N(0, 1) clipped to +-60, a scale factor
1 + 0.25 N(0, 1) clipped to [0.75, 1.25], gains uniform in [0.8, 1.2]. The epoch count and
step-wise schedule (x0.1 at epochs 60 and 90 of 100) follow the same port, whose parameter count
this model matches; the paper only says the rate is dropped once validation accuracy plateaus.

`get_config("2")` gives the 2-stack variant (configs/hourglass2_mpii.py).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """arg: number of stacks (default 8)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = ml_collections.ConfigDict(dict(
      name="hourglass", num_stacks=int(arg or 8), features=256, depth=4, num_blocks=1))
  c.dataset = ml_collections.ConfigDict(dict(
      name="mpii", config="default", data_dir="", manual_dir="", skeleton="mpii",
      train_split="train", eval_split="validation",
      # Keep only what the training crops can reach of each photo, once, at start-up
      # (pipeline.precrop): a 609x609 JPEG to decode per example instead of a 1280x720 photo
      # (3.7x faster, measured at 589x589: uniform draws reach less far). Evaluation reads the
      # original images.
      precrop=True))
  c.input_size = 256
  c.output_size = 64
  c.sigma = 1.0  # Heat-map Gaussian std in output pixels (1 at 64x64; scale with resolution).
  c.loss = "mse"  # "mse" (paper) or "softmax_ce".
  c.augment = ml_collections.ConfigDict(dict(
      rotation=30.0, rotation_prob=0.6, scale=0.25, flip=True, color=0.2,
      distribution="normal_clipped"))
  c.optimizer = ml_collections.ConfigDict(dict(
      name="rmsprop", learning_rate=2.5e-4, schedule="piecewise", decay_epochs=(60, 90),
      decay_factor=0.1, warmup_steps=0))
  c.batch_size = 6  # Global, over all devices and hosts.
  c.eval_batch_size = 48
  c.num_epochs = 100
  c.num_train_steps = -1  # > 0 overrides num_epochs.
  c.log_every_steps = 100
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 5000
  c.keep_checkpoints = 3  # The latest N, plus the best by validation PCKh.
  c.flip_test = True
  # Resample and colour the pre-cropped pixels on the accelerator, in the train step
  # (jaxpose/data/device_augment.py); the host only decodes JPEGs and renders targets.
  c.augment_on_device = True
  c.mixed_precision = "float32"  # or "bfloat16": bf16 compute, float32 parameters and loss.
  c.remat = False  # Rematerialise each stack in the backward pass to fit bigger batches.
  return c
