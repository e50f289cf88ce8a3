"""Fields every config has, whatever the family (the trainer, pipeline and evaluator read them).

Family configs start from `get_config()` here and set `model` (with its `name`, a row of
`jaxpose.families.BUILDERS`) and what their recipe changes. Defaults are the Stacked Hourglass
paper's recipe on MPII.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = ml_collections.ConfigDict(dict(name=""))
  c.dataset = ml_collections.ConfigDict(dict(
      name="mpii", config="default", data_dir="", manual_dir="", skeleton="mpii",
      train_split="train", eval_split="validation",
      # Keep only what the training crops can reach of each photo, once, at start-up
      # (pipeline.precrop): a 589x589 JPEG to decode per example instead of a 1280x720 photo
      # (3.7x faster). Evaluation reads the original images.
      precrop=True,
      # Build the pre-crop once into a cache folder (jaxpose/data/precrop_cache.py), shared by
      # every host and every later run, in precrop_cache_dir (default DATA_DIR/jaxpose_precrop);
      # False: pre-crop in memory at every start.
      precrop_cache=True, precrop_cache_dir="",
      # How the pre-crop is stored: "jpeg" (~77 KB a 589 px MPII pre-crop; its decoding bounds
      # a host core at ~700 crops/s) or "raw" (uncompressed, ~1 MB, 13x the disk; ~2,500 crops/s
      # a core from the cache): for hosts short of cores per accelerator.
      precrop_format="jpeg"))
  c.input_size = 256
  c.output_size = 64  # Heat-map side (heat-map families).
  c.sigma = 1.0  # Heat-map Gaussian std in output pixels (1 at 64x64; scale with resolution).
  # Heat-map decoding: 0 = argmax + quarter-pixel shift (the hourglass papers); n = bicubic
  # upsampling by n, then the argmax (CPM's release, n = its stride 8). eval.py can override.
  c.decode_upsample = 0
  c.loss = "mse"  # Heat-map families: "mse" (the papers') or "softmax_ce".
  c.loss_scale = 1.0  # Constant factor on the loss (e.g. the PyTorch reference's 0.5).
  c.augment = ml_collections.ConfigDict(dict(
      rotation=30.0, rotation_prob=0.6, scale=0.25, flip=True, color=0.2,
      distribution="uniform"))
  c.optimizer = ml_collections.ConfigDict(dict(
      name="rmsprop", learning_rate=2.5e-4, schedule="piecewise", decay_epochs=(60, 90),
      decay_factor=0.1, decay_steps=0, warmup_steps=0, momentum=0.9, weight_decay=0.0,
      caffe_lr_mult=False))  # Families with Caffe per-layer multipliers (CPM) honour it.
  c.batch_size = 6  # Global, over all devices and hosts.
  c.eval_batch_size = 48
  c.num_epochs = 100
  c.num_train_steps = -1  # > 0 overrides num_epochs.
  # Training phases run in order, ((name, num_steps, trainable subtrees or "*"), ...); empty:
  # one phase of num_train_steps / num_epochs training everything (jaxpose/optim.py).
  c.phases = ()
  c.phase_sample = 2048  # Training people a phase hook predicts (e.g. DeepPose's error stats).
  # At the end of each phase, replace BatchNorm's running statistics by their mean over this
  # many training batches (PreciseBN; steps.precise_batch_stats). 0: the running averages
  # training leaves, as the papers' frameworks do.
  c.precise_bn_batches = 0
  # Multi-stage families: a stage begins from the previous stage's weights where their shapes
  # agree (DeepPose's stages >= 3, which see the same patches as stage 2) instead of afresh.
  c.warm_start_stages = False
  c.log_every_steps = 100
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 5000
  c.keep_checkpoints = 3  # The latest N, plus the best by validation PCKh.
  c.flip_test = True
  # Send uint8 crops; colour and normalise them on the accelerator, in the train step
  # (jaxpose/data/device_augment.py): the host decodes each JPEG and resamples its crop in uint8
  # (OpenCV), sending the crop's input_size^2 x 3 bytes. With resample_on_device too
  # (pre-cropped sources) the host only decodes and sends the stored pixels (~5x the bytes),
  # and the train step resamples them.
  c.augment_on_device = True
  c.resample_on_device = False
  c.mixed_precision = "float32"  # or "bfloat16": bf16 compute, float32 parameters and loss.
  c.remat = False  # Rematerialise blocks in the backward pass to fit bigger batches.
  # The optimiser's update as an XLA program of its own, after the gradients' (steps.TrainStep):
  # the step compiles and is read back on two threads (the 8-stack hourglass's warm start
  # 0.70-0.74x on 2 cores), at ~5 ms more of the host's time a step. False: one program.
  c.update_apart = True
  # The step as an XLA program per kind of the family's segments (steps.SegmentedStep; the
  # families that declare them: the hourglass): what several alike stacks share compiles once,
  # and programs read back in time that grows faster than they do. Worth it where one program
  # is large (the 8-stack hourglass); the 2-stack's one program compiles faster.
  c.segmented_step = False
  return c
