r"""Quickstart: every family, sized for a CPU, on the built-in synthetic people.

  python train.py --config configs/quickstart.py --workdir runs/qs           # the hourglass
  python train.py --config configs/quickstart.py:cpm --workdir runs/qs_cpm   # or :tompson,
  python eval.py --ckpt runs/qs                                              # :deeppose, :ief

The argument is a family name (default "hourglass"), optionally with "-tiny" (a seconds-long
version for smoke tests; plain "tiny" is the hourglass's). Each variant trains for about ten
minutes on a 2-core CPU; the README's table gives every family's number.

Hourglass: 1 stack, 48 features, depth 3, 128x128 input, 32x32 heat maps (sigma 1), batch 8,
7000 steps. Unlike the paper configs it trains with a per-joint softmax cross-entropy on the
Gaussian targets and Adam (1.5e-3, warm-up, cosine decay): on CPU, from scratch, plain MSE on
sigma-1 targets sits near zero for the first ~500 steps while cross-entropy learns at once.
Augmentation is flips, +-15% scale and colour jitter only (the synthetic people are already
rotated in the data). Pipeline, flip test, decoding and metric are the paper's.
"""

import ml_collections

from configs import base
from configs import hourglass_mpii

def _common(c):
  """What every quickstart shares: the synthetic data, a CPU-sized input and schedule."""
  c.dataset.name = "synthetic"
  c.dataset.precrop = False  # The synthetic images are already person-sized ...
  c.augment_on_device = False  # ... and the CPU is the device.
  c.input_size = 128
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1.5e-3
  c.optimizer.warmup_steps = 100
  c.optimizer.schedule = "cosine"
  c.batch_size = 8  # As many images/s as 16 on a CPU, twice the updates.
  c.eval_batch_size = 64
  # One program for the step: read back in under a second anyway, while the update's own
  # dispatch costs a 40-70 ms step 1-6% (docs/performance_log.md).
  c.update_apart = False
  c.segmented_step = False  # One program (hourglass_mpii.py's 8 stacks set it).
  # The synthetic people are already rotated +-30 deg in the data: no rotation on top, and a
  # milder scale jitter, so ten minutes of CPU go to the validation distribution.
  c.augment.rotation_prob = 0.0
  c.augment.scale = 0.15
  c.augment.distribution = "uniform"  # Scale uniform in 1 +- 0.15 (not the reference's normal).
  c.log_every_steps = 100
  return c


def _tiny(c):
  """Seconds, not minutes: the tiny synthetic split, 64 px, 6 steps."""
  c.dataset.config = "tiny"
  c.input_size = 64
  c.batch_size = 8
  c.eval_batch_size = 8
  c.num_epochs = 1
  c.num_train_steps = 6
  c.log_every_steps = 2
  c.eval_every_steps = 3
  c.checkpoint_every_steps = 3
  return c


def hourglass(tiny: bool):
  c = _common(hourglass_mpii.get_config())
  c.model.num_stacks = 1
  c.model.features = 48
  c.model.depth = 3
  c.model.init_scheme = "lecun"  # What the measured quickstart used (not a paper recipe).
  c.output_size = 32
  c.sigma = 1.0
  c.loss = "softmax_ce"
  c.loss_scale = 1.0
  # 7000 steps: 92.60 in 9.5 min on 2026-12-02 (90.17 at step 3500), when this machine ran
  # 1.8x faster than in the sessions before (a step 0.078 s inside train.py, 0.14 s then); in
  # those, 4000 steps took 9.3 min (88.86) and 7000 would take ~16 (docs/results_log.md).
  c.num_train_steps = 7000
  c.eval_every_steps = 1750
  c.checkpoint_every_steps = 1750
  if tiny:
    c = _tiny(c)
    c.model.features = 16
    c.model.depth = 2
    c.output_size = 16
  return c


def cpm(tiny: bool):
  """A CPU-sized CPM in the layout of the release's VGG variant (one shared front end of 3x3
  convolutions with 2x2 pools, then stages of large convolutions on [beliefs, features, centre
  map]), narrow, at 128 px with two pools (stride 4: 32x32 belief maps, as many cells per
  person as the release's 46x46 at 368 px give; stride 8 would leave a head 1.4 cells wide),
  3 stages of three 5x5 convolutions, BatchNorm and He initialisation for training from
  scratch, and the release's decoding (beliefs upsampled to the input, then the argmax).

  Measured (docs/results_log.md): 84.45 at step 1800, 9.8 min (80.30 at 1550). At stride 8
  with 7x7 stages: 77.51 at step 2000 (79.70 decoded by upsampling); the original layout's two
  3-conv trunks: 54.6 (55.9 at step 900 with BatchNorm)."""
  c = _common(base.get_config())
  c.model = ml_collections.ConfigDict(dict(
      name="cpm", variant="vgg", num_stages=3, vgg_features=((16,), (32, 32), (48, 48)),
      cpm_features=(48, 32), head_features=64, mconv_features=32, num_mconv=3, stage_kernel=5,
      batch_norm=True, init_scheme="he"))
  c.output_size = 32
  c.sigma = 1.0
  c.decode_upsample = 4
  c.loss = "softmax_ce"
  c.num_train_steps = 1800
  c.eval_every_steps = 900
  c.checkpoint_every_steps = 900
  if tiny:
    c = _tiny(c)
    c.model.update(num_stages=2, vgg_features=((4,), (8,), (8,)), cpm_features=(8,),
                   head_features=16, mconv_features=8, num_mconv=1, stage_kernel=3)
    c.output_size = 16
  return c


def tompson(tiny: bool):
  """A CPU-sized Tompson et al.: three narrow banks at 128 px, stride 4 (32x32 maps), the
  spatial model on; trained in the paper's three phases (detector, spatial model, jointly),
  decoded as CPM's release does (maps upsampled x4, then the argmax). Measured
  (docs/results_log.md): 78.53 in 7.9 min."""
  c = _common(base.get_config())
  c.model = ml_collections.ConfigDict(dict(
      name="tompson", bank_features=(16, 32, 32, 64), bank_kernels=(5, 5, 5, 7),
      head_features=(64,), output_stride=4, spatial_model=True))
  c.output_size = 32
  c.sigma = 1.0
  c.decode_upsample = 4  # 70.97 -> 71.59 on the same checkpoint.
  c.loss = "softmax_ce"
  # Measured: 72.98 in 9.7 min (70.97 before the spatial phase stopped paying for the frozen
  # detector's backward pass, with [1300, 300, 300] and no upsampling). [1000, 250, 650]:
  # 73.62 in 10.3 min. With BatchNorm in the detector (model.batch_norm=True) and
  # [1100, 250, 300] steps to pay for it: 68.36, the detector alone no better (54.3 vs 54.2).
  # In a slower session: [1000, 200, 700]: 74.59 in 10.9 min; [700, 100, 800]: 73.20 in 10.3 min;
  # He-initialised detector, [900, 150, 650]: 70.63 in 10.3 min. On 2026-12-02, with the
  # machine ~1.8x faster (the hourglass quickstart's step 0.14 -> 0.078 s): [1400, 250, 900]:
  # 78.53 in 7.9 min (~14 min at the earlier sessions' speed).
  steps = [1400, 250, 900]
  if tiny:
    c = _tiny(c)
    c.model.update(bank_features=(8, 8, 8, 16), bank_kernels=(3, 3, 3, 3), head_features=(16,),
                   lcn_size=5, lcn_sigma=1.0)
    c.output_size = 16
    steps = [3, 3, 3]
  c.phases = (("detector", steps[0], "detector"), ("spatial", steps[1], "spatial"),
              ("joint", steps[2], "*"))
  c.num_train_steps = sum(steps)
  c.eval_every_steps = sum(steps) // 2 if not tiny else sum(steps)
  c.checkpoint_every_steps = c.eval_every_steps
  return c


def _regression_common(c, phase_names, steps, tiny):
  """One phase per stage / iteration, each `steps[i]` long."""
  if tiny:
    c = _tiny(c)
    steps = [3] * len(phase_names)
  c.phases = tuple((name, n, trainable) for (name, trainable), n in zip(phase_names, steps))
  c.num_train_steps = sum(steps)
  c.eval_every_steps = sum(steps)
  c.checkpoint_every_steps = max(steps)
  return c


def deeppose(tiny: bool):
  """A CPU-sized DeepPose cascade: 3 stages of a narrow AlexNet-style regressor, stage 1 at
  128 px, refinement patches of 56 px cut from the same person at 256 px (the paper's "higher
  resolution" for the later stages), trained stage by stage (one phase each); no dropout (the
  paper's is 0.6 on its fc layers; 0.2 here gave 36.5 -> 41.0 -> 41.8: in a ten-minute run from
  scratch it only slows the fit), stage 3 starting from stage 2's weights, flips only (no scale
  or colour jitter, below). Measured (docs/results_log.md): 47.0 -> 53.5 -> 53.8 per stage, 9.9 min
  (2026-12-04, an AMD EPYC); with the jitter 45.9 -> 51.5 -> 52.3 in 9.5 min on the Intel
  machine (2026-12-02), 44.9 -> 50.0 -> 50.6 in 10.0 min on the AMD EPYC. BatchNorm
  (model.batch_norm) with batch 16 trained stage 1 slower per image than this (loss 0.0089
  against 0.0074 after the same 38k images)."""
  c = _common(base.get_config())
  c.model = ml_collections.ConfigDict(dict(
      name="deeppose", num_stages=3, features=(48, 96, 128, 128, 96), hidden=1024,
      dropout_rate=0.0, box_factor=1.0, stage1_size=128, patch_size=56, batch_norm=False))
  # As in the paper, the refinement stages see more detail than stage 1: the host delivers the
  # person at 256 px, stage 1 sees it averaged down to 128, the patches (about the pose
  # diameter, ~80 px at 256) are cut at 256. Sent as the uint8 crop (augment_on_device): 26.5
  # steps/s in stage 1 against 21 with the host's float32 crop.
  c.input_size = 256
  c.augment_on_device = True
  # Flips only, as IEF's quickstart: the validation people are not jittered, and in ten minutes
  # the scale and colour jitter only slow the fit. 2026-12-04, the AMD EPYC, one run each:
  # 47.0 -> 53.5 -> 53.76 in 9.9 min against 44.9 -> 50.0 -> 50.56 in 10.0 with the jitter;
  # seed 1 48.0 -> 54.2 -> 54.62 in 9.7 against 46.6 -> 51.2 -> 51.88 in 9.6.
  c.augment.scale = 0.0
  c.augment.color = 0.0
  phases = (("stage1", "stage1"), ("stage2", "stage2"), ("stage3", "stage3"))
  # The error statistics each later stage trains on, from 512 training people (2048 by
  # default): 2x2 covariances need few samples, and predicting 2048 through the cascade cost
  # ~1 min a stage here.
  c.phase_sample = 512
  # Before the patches came from the 256 px person (all at 128 px, 48 px patches, same speed
  # of machine, 2026-12-02): [9000, 1000, 1000] 44.0 -> 47.0 -> 47.9 in 9.4 min; with stage 3
  # starting from stage 2's weights and [10500, 1000, 600] 46.6 -> 51.3 -> 51.4 in 9.1 min;
  # [9500, 1400, 600] 44.4 -> 49.7 -> 49.6 in 9.6; [10500, 1400, 200] 46.6 -> 51.6 -> 50.8 in
  # 9.3 (that stage 3 at a tenth of the learning rate: 50.75): stage 3 never added more than
  # +0.9. With the 256 px source and 64 px patches, [10500, 1000, 600]: 44.1 -> 50.3 -> 50.6 in
  # 11.4 min (stage 1 resized with the anti-aliased linear filter, 5.6 ms a batch, not the
  # 2 x 2 mean's 1.4 ms).
  c.warm_start_stages = True  # Stage 3 starts from stage 2's weights (same patches).
  c = _regression_common(c, phases, [10500, 1000, 600], tiny)
  if tiny:  # DeepPoseNet needs >= 37 px.
    c.input_size = 96
    c.model.update(features=(8, 16, 16, 16, 16), hidden=32, stage1_size=48, patch_size=48)
  return c


def ief(tiny: bool):
  """A CPU-sized IEF: a quarter-width GoogLeNet at 128 px with five of its nine Inception
  modules (below) and BatchNorm (BN-Inception's layers: the paper started from ImageNet
  weights; from scratch, without BatchNorm, the loss did not move in 400 steps), 3 iterations,
  trained by fixed path consolidation (one phase per step), the pose maps' Gaussians half the
  release's width (std 0.05 of the crop, 6.4 px; the release's 0.1 is 22.4 px at 224),
  BatchNorm's statistics re-estimated at each phase's end (PreciseBN: 58.1 in 7.0 min on
  2026-12-04, below), the uint8 crop augmented in the step and the fixed path run only where
  needed, [5600, 3300, 2600] steps, flips only (no scale or colour jitter, below): 45.60 ->
  63.11 -> 67.70 in 7.5 min (2026-12-06, 09:56 UTC, an AMD EPYC; seeds 1 and 2: 66.65, 66.17).
  All nine modules at [4300, 2550, 2000] steps: 43.1 -> 58.5 -> 62.67 in 9.4 min (2026-12-04,
  14:38 UTC, an AMD EPYC). With the jitter, on the Intel machine: 42.8 -> 58.5 -> 62.2 in 9.9 min
  (2026-12-04, 06:50 UTC), 8.3 min with the later phases' steps compiled ahead (07:19 UTC, a
  faster half hour). Before that (docs/results_log.md, 2026-12-03, 13:00 UTC, the maps no
  longer rendered: same network, different rounding): 40.9 -> 52.6 -> 53.8 per iteration in 9.8
  min in a slower session (seed 1: 39.0 -> 53.8 -> 55.7). Rendered, 09:45 UTC: 41.3 -> 55.1 ->
  56.6 in 9.7 min (seed 1: 55.7 in 9.3); std 0.03: 55.1 in 9.8; the release's 0.1: 37.7 -> 51.9
  -> 53.2 in 9.7 min (with huge pages; 9.6 without, in a faster session). The earlier 4,900
  steps at std 0.1: 36.1 -> 49.4 -> 49.5 in 7.2 min (seed 1: 51.5 in 6.9; 52.0 in 8.2 and in
  10.4 min in slower sessions, before a change of rounding), without dropout (0.2 in an earlier,
  shorter run: 27.9 -> 37.1 -> 39.8 against 29.6 -> 38.8 -> 40.9; as for DeepPose, the paper's
  dropout only slows a ten-minute fit from scratch). The paper's bound on each step, 20 px at
  224 (`model.max_step`, normalised), scaled to 128 px; 20 px at 128 (max_step=0.16): 32.1 ->
  36.0 -> 36.9."""
  c = _common(base.get_config())
  c.model = ml_collections.ConfigDict(dict(name="ief", num_iterations=3, width_divisor=4,
                                           dropout_rate=0.0, batch_norm=True, map_sigma=0.05,
                                           fixed_path="current"))
  # Five of GoogLeNet's nine Inception modules (3a, 3b at 16 px; 4a, 4e at 8; 5a at 4), as the
  # tiny variant keeps a subset: at this width the modules are small products whose calls,
  # not their arithmetic, cost the time, so the step takes 0.76x the nine's, and per step the
  # shallower network fits no worse. The nine at the same steps: 65.24 / 64.38 / 61.29 on seeds
  # 0 / 1 / 2 (docs/results_log.md, "Five Inception modules").
  c.model.inception_modules = ("3a", "3b", "4a", "4e", "5a")
  if tiny:  # As ief.IEFTiny: 1/16 of the widths, one Inception module per resolution.
    c.model.width_divisor = 16
    c.model.inception_modules = ("3a", "4a", "5a")
  # BatchNorm's statistics re-estimated at each phase's end on 100 batches (PreciseBN): the
  # running averages of momentum 0.9 over batches of 8 are noisy, and the fixed path of the
  # next phase is computed with them. On the table's checkpoint alone (2026-12-04): 53.79 ->
  # 55.40 (200 batches 55.51; seed 1's 55.74 -> 56.02, the one-schedule run's 55.08 -> 57.02).
  # In training, the same schedule: 41.9 -> 55.7 -> 58.1 in 7.0 min (a faster session), seed 1
  # 41.0 -> 56.3 -> 60.7.
  c.precise_bn_batches = 2 if tiny else 100
  # The fixed path run with the weights being trained ("current"), not with the network each
  # phase began with, frozen, as the paper's FPC (the family's default, configs/ief_mpii.py's).
  # 2026-12-06, the AMD EPYC, one run each (the same first phase: the path begins in phase 2),
  # current against frozen: seed 0 63.38 against 60.62, seed 1 61.37 against 61.71, seed 2
  # 61.09 against 59.12; means 61.95 and 60.48 (docs/results_log.md). In our reading, in ten
  # minutes the network moves far within a phase, and a frozen path feeds it poses its own path
  # no longer passes through at test.
  # Flips only, no scale or colour jitter: the validation people are not jittered, and in ten
  # minutes IEF underfits (the training split scores what the validation split does), so the
  # jitter only slows the fit. The same schedule, 2026-12-04 (the AMD EPYC session, one run
  # each): 43.1 -> 58.5 -> 62.67 in 9.4 min against 42.1 -> 57.0 -> 60.36 with the jitter;
  # seed 1 43.6 -> 59.2 -> 63.53 in 9.2 min against 42.5 -> 57.8 -> 61.39.
  c.augment.scale = 0.0
  c.augment.color = 0.0
  # The uint8 crop, resampled and coloured in the jitted step (as DeepPose's quickstart): the
  # host's share 3.6 ms of CPU a batch instead of 10.2, and the first phase at 20.7 against
  # 18.6 steps/s in train.py (2026-12-04, one run each of 1,200 steps).
  c.augment_on_device = True
  phases = (("step1", "*"), ("step2", "*"), ("step3", "*"))
  # Since 2026-12-04 the later phases run the fixed path only for the examples that need it
  # (`regression.fixed_path_poses`; the step alone 0.95x / 0.89x the time in phases 2 / 3),
  # and with the uint8 crop [5000, 3000, 2350] gave 44.3 -> 60.2 -> 64.0 in 11.2 min (phase 3
  # slower than in a shorter run, 13.5 against 17 steps/s: the machine's noise, in our reading).
  # Phases cost ~0.08 / 0.10 / 0.12 s a step here (phase t also runs the t-1 earlier steps'
  # forward passes). [2000, 1100, 900]: 46.9 in 7.6 min; [2200, 1300, 1000]: 49.1 in 7.4 (a
  # faster session); [2900, 1700, 600]: 51.7 in 9.0 (the same). Narrower (docs/results_log.md):
  # width_divisor=8 with [4000, 2200, 1800] 49.6 in 10.5 min, [3700, 2000, 1700] 46.7 in 10.0;
  # width_divisor=16 with [5000, 2800, 2200] 41.3 in 8.9. [2400, 1400, 1100]: 49.5 in 7.2
  # (2026-12-03 05:30 UTC; 10.4 min on a slower evening). [3200, 1900, 1500]: 53.2 in 9.6 min
  # then, and in 9.7 at 08:00 with train.py's huge pages in an otherwise slower session.
  # [4300, 2550, 2000] with all nine modules until 2026-12-06; the five modules' cheaper step
  # runs 1.3x that schedule in less time (7.5 against 7.1-8.5 min, the same AMD EPYC).
  return _regression_common(c, phases, [5600, 3300, 2600], tiny)


FAMILIES = {"hourglass": hourglass, "cpm": cpm, "tompson": tompson, "deeppose": deeppose,
            "ief": ief}


def get_config(arg: str | None = None):
  family, _, variant = (arg or "hourglass").partition("-")
  if family == "tiny":
    family, variant = "hourglass", "tiny"
  if family not in FAMILIES or variant not in ("", "tiny"):
    raise ValueError(f"Unknown quickstart variant {arg!r}; use one of {list(FAMILIES)}, "
                     "optionally with '-tiny' (or plain 'tiny' for the hourglass).")
  return FAMILIES[family](variant == "tiny")
