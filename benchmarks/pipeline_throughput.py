r"""Input-pipeline throughput: the full training augmentation at 256x256 on MPII-sized JPEGs.

  python benchmarks/pipeline_throughput.py                 # 1 core: images/s per core
  python benchmarks/pipeline_throughput.py --threads 0     # every core
  python benchmarks/pipeline_throughput.py --profile       # where the time goes, per stage

Data: generated photo-like JPEGs of 1280x720 (MPII's usual size; quality 90, ~450 KB, near
MPII's average of 12.9 GB / 24984 images = ~520 KB; the decode time grows with the file size)
with one person each at MPII-typical scales (hourglass scale 1.9-5.6, box side 380-1120 px),
held in memory as `datasets.load_source` holds a real split.
Batches come from `pipeline.train_dataset` as the Stacked Hourglass family
(`families.create_family(configs/hourglass_mpii.py)`) takes them, with the paper's augmentation:
crops and joints (the family renders its 64x64 heat maps inside the jitted step). The goal
(issue 12) is >= 1,500 images/s per core for the host's part, with no more bytes sent to the
device per image than the uint8 crop's (256 x 256 x 3 = 192 KB). Measured on the original
photos and on the same split pre-cropped into the cache, as `train.py` reads it by default
(`config.dataset.precrop` and `precrop_cache`: each person's reachable square stored once at the
density the crops need, in a temporary folder here; its one-off cost is printed), stored as
JPEGs (`config.dataset.precrop_format="jpeg"`, the default) and uncompressed ("raw"), for
each of what the host can send (`MODES`): the finished float32 crop; the uint8 crop, coloured
in the jitted step (`config.augment_on_device`, the default); the stored uint8 pixels,
resampled and coloured in the step (`config.resample_on_device` too). Each row gives the
host's rate, the bytes per image in the batches it sends and the device half's cost on JAX's
default backend.

--profile times the per-example stages on the same examples, for the original photos and the
pre-cropped ones: JPEG decode alone, decode + uint8 -> float conversion, decode + warp, and
the full `pipeline.process_example`. (A tried alternative, decoding only the window a crop
reads with `decode_and_crop_jpeg` and libjpeg's DCT scaling, gave 1.3x on the original photos
and nothing on pre-cropped ones; see `pipeline.train_dataset`.)
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import cv2
import jax
import tensorflow as tf

from configs import hourglass_mpii
from jaxpose import families
from jaxpose import skeletons
from jaxpose.data import device_augment
from jaxpose.data import pipeline
from jaxpose.data import precrop_cache

INPUT_SIZE = 256
GOAL = 1500.0  # images/s per core, the host part (issue 12)
IMAGE_SIZE = (720, 1280)  # height, width


# ----------------------------------------------------------------------------------------
# Data.


def photo_like(rng: np.random.Generator, size=IMAGE_SIZE) -> np.ndarray:
  """An image with a roughly 1/f spectrum (octaves of upsampled noise), like a photo."""
  height, width = size
  image = np.zeros((height, width, 3), np.float32)
  for octave in range(1, 8):
    cells = 2 ** octave
    h, w = max(2, height * cells // width), cells
    noise = rng.normal(0.0, 1.0, (h, w, 3)).astype(np.float32)
    up = tf.image.resize(noise[None], (height, width), method="bilinear")[0].numpy()
    image += up * (0.6 ** octave)
  image = (image - image.min()) / (image.max() - image.min())
  image += rng.normal(0.0, 0.08, image.shape).astype(np.float32)  # Texture and noise.
  return (np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def make_source(num_images: int, seed: int = 0, quality: int = 90) -> pipeline.Source:
  """`num_images` encoded 1280x720 JPEGs, one MPII-like person each."""
  rng = np.random.default_rng(seed)
  k = skeletons.MPII.num_joints
  images, joints, centers, scales = [], [], [], []
  for _ in range(num_images):
    images.append(tf.io.encode_jpeg(photo_like(rng), quality=quality).numpy())
    scale = rng.uniform(1.9, 5.6)  # Hourglass scale (x1.25 included): MPII's middle 90%.
    center = np.array([rng.uniform(400, 880), rng.uniform(250, 470)])
    joints.append(center + rng.uniform(-60, 60, (k, 2)) * scale)
    centers.append(center)
    scales.append(scale)
  n = num_images
  annotations = {
      "joints": np.asarray(joints, np.float32), "visible": np.ones((n, k), np.float32),
      "occluded": np.zeros((n, k), np.float32), "center": np.asarray(centers, np.float32),
      "scale": np.asarray(scales, np.float32), "head_box": np.zeros((n, 4), np.float32),
      "norm_size": np.ones((n,), np.float32), "id": np.arange(n, dtype=np.int64)}
  return pipeline.Source("mpii-like", tf.constant(images), annotations, skeletons.MPII)


# ----------------------------------------------------------------------------------------
# Measuring.


def _options(threads: int) -> tf.data.Options:
  options = tf.data.Options()
  if threads:
    options.threading.private_threadpool_size = threads
  options.threading.max_intra_op_parallelism = 1
  return options


def _rate(ds: tf.data.Dataset, batch_size: int, batches: int, warmup: int) -> float:
  """Images/s over `batches` batches after `warmup` batches."""
  it = iter(ds)
  for _ in range(warmup):
    next(it)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * batch_size / (time.perf_counter() - start)


# What crosses to the device (pipeline.train_dataset): the finished float32 crop; the uint8
# crop with colour on the device (config.augment_on_device); the stored uint8 pixels, resampled
# on the device (and config.resample_on_device).
MODES = {"host": {}, "uint8 crop": dict(on_device=True),
         "stored pixels": dict(on_device=True, resample_on_device=True)}


def _train_dataset(source, target_fn, batch_size: int, mode: str) -> tf.data.Dataset:
  return pipeline.train_dataset(source, input_size=INPUT_SIZE, target_fn=target_fn,
                                augment=pipeline.Augment(), global_batch_size=batch_size,
                                seed=0, **MODES[mode])


def train_rate(source, target_fn, threads: int, batch_size: int, batches: int,
               mode: str = "host") -> tuple[float, float]:
  """(images/s, bytes per image sent to the device) of `pipeline.train_dataset`."""
  ds = _train_dataset(source, target_fn, batch_size, mode).with_options(_options(threads))
  sent = sum(v.nbytes for v in next(ds.as_numpy_iterator()).values()) / batch_size
  return _rate(ds, batch_size, batches, warmup=3), sent


def device_half_ms(source, target_fn, batch_size: int, mode: str, repeats: int = 10) -> float:
  """ms per image of `device_augment.input_images` (jitted) on JAX's default backend."""
  ds = _train_dataset(source, target_fn, batch_size, mode)
  keys = (pipeline.CROP, pipeline.PIXELS, pipeline.INVERSE, pipeline.GAINS)
  batch = jax.device_put({k: v for k, v in next(ds.as_numpy_iterator()).items() if k in keys})
  fn = jax.jit(device_augment.input_images, static_argnums=1)
  fn(batch, INPUT_SIZE).block_until_ready()
  start = time.perf_counter()
  for _ in range(repeats):
    fn(batch, INPUT_SIZE).block_until_ready()
  return 1e3 * (time.perf_counter() - start) / (repeats * batch_size)


def precropped(source: pipeline.Source, cache_dir: str,
               image_format: str) -> tuple[pipeline.Source, float]:
  """The split pre-cropped into the cache under `cache_dir` for the paper's augmentation at
  256x256 and read back as `train.py` reads it, and the build's cost in s/image."""
  split = precrop_cache.Split(
      name="mpii-like/train", fingerprint={"images": source.num_examples},
      num_examples=source.num_examples, skeleton=source.skeleton,
      read=lambda begin, end: pipeline.subset(source, np.arange(begin, end)))
  start = time.perf_counter()
  cropped = precrop_cache.load(split, cache_dir, input_size=INPUT_SIZE,
                               augment=pipeline.Augment(), image_format=image_format)
  return cropped, (time.perf_counter() - start) / source.num_examples


def stage_rates(source, target_fn, threads: int, batch_size: int,
                batches: int) -> dict[str, float]:
  """Images/s of the per-example stages on the same examples (same map/batch layout)."""
  n = source.num_examples
  ann_consts = {k: tf.constant(v) for k, v in source.annotations.items()}
  aug = pipeline.Augment()

  def example(i):
    index = i % n
    ann = {k: tf.gather(v, index) for k, v in ann_consts.items()}
    return source.encoded(index), ann, tf.stack([tf.constant(1, tf.int64), i])

  def only_decode(i):
    encoded, _, _ = example(i)
    return tf.io.decode_jpeg(encoded, channels=3)[:1, :1]

  def decode_float(i):
    encoded, _, _ = example(i)
    return pipeline.decode_image(encoded)[:1, :1]

  def decode_warp(i):
    encoded, ann, seed = example(i)
    return pipeline.process_example(encoded, ann, input_size=INPUT_SIZE,
                                     skeleton=source.skeleton, target_fn=None, augment=aug,
                                     seed=seed)["image"]

  def full(i):
    encoded, ann, seed = example(i)
    return pipeline.process_example(encoded, ann, input_size=INPUT_SIZE,
                                    skeleton=source.skeleton, target_fn=target_fn,
                                    augment=aug, seed=seed)

  rates = {}
  for name, fn in (("decode JPEG (uint8)", only_decode),
                   ("decode + to float32", decode_float),
                   ("decode + warp (no targets)", decode_warp),
                   ("full example (process_example)", full)):
    ds = tf.data.Dataset.range(2**62).map(fn, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size).prefetch(2).with_options(_options(threads))
    rates[name] = _rate(ds, batch_size, batches, warmup=3)
  return rates


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--images", type=int, default=48, help="Distinct JPEGs in memory.")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--batches", type=int, default=30, help="Timed batches per figure.")
  parser.add_argument("--threads", type=int, default=1,
                      help="tf.data threads (0: TF's default, every core).")
  parser.add_argument("--profile", action="store_true", help="Time each stage too.")
  args = parser.parse_args(argv)
  if args.threads:
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    cv2.setNumThreads(args.threads)  # The uint8 crops' resampling: no threads of its own.
  cores = args.threads or len(os.sched_getaffinity(0))

  start = time.perf_counter()
  source = make_source(args.images)
  kb = np.mean([len(x) for x in source.images.numpy()]) / 1024
  print(f"{args.images} JPEGs of {IMAGE_SIZE[1]}x{IMAGE_SIZE[0]}, mean {kb:.0f} KB "
        f"(made in {time.perf_counter() - start:.0f} s); batch {args.batch_size}, "
        f"{args.batches} timed batches, {cores} core(s), load average "
        f"{os.getloadavg()[0]:.1f}")
  target_fn = families.create_family(hourglass_mpii.get_config()).target_fn

  cache_dir = tempfile.mkdtemp(prefix="jaxpose-precrop-")
  cropped, cost = precropped(source, cache_dir, "jpeg")
  raw, raw_cost = precropped(source, cache_dir, "raw")
  side = np.mean([tf.io.extract_jpeg_shape(x).numpy()[0]
                  for x in cropped.encoded(tf.range(args.images))])
  kb, raw_kb = (np.mean(src.images.length) / 1024 for src in (cropped, raw))
  print(f"pipeline.train_dataset, full augmentation at {INPUT_SIZE}x{INPUT_SIZE} (the "
        f"pre-crop: config.dataset.precrop, from the cache in {cache_dir}, mean side {side:.0f} "
        f"px; stored as JPEG {kb:.0f} KB, one-off {1e3 * cost * cores:.1f} ms per image per "
        f"core; raw {raw_kb:.0f} KB, {1e3 * raw_cost * cores:.1f} ms; goal {GOAL:.0f} "
        "images/s per core):")
  base = None
  for label, src, modes in (("original photos", source, ("host", "uint8 crop")),
                            ("pre-crop, JPEG", cropped, tuple(MODES)),
                            ("pre-crop, raw", raw, tuple(MODES))):
    for mode in modes:
      rate, sent = train_rate(src, target_fn, args.threads, args.batch_size, args.batches,
                              mode)
      base = base or rate
      device = (f"; device half {device_half_ms(src, target_fn, args.batch_size, mode):.2f} "
                f"ms per image on JAX's {jax.default_backend()} backend"
                if mode != "host" else "")
      print(f"  {label:15s} {mode:13s} {rate / cores:6.0f} images/s per core ({rate / base:4.1f}x)"
            f", {sent / 1024:6.0f} KB per image to the device{device}")
  if args.profile:
    for label, src in (("original photos", source), ("pre-crop, JPEG", cropped)):
      print(f"  stages, {label}:")
      for name, r in stage_rates(src, target_fn, args.threads, args.batch_size,
                                 args.batches).items():
        print(f"    {name:36s} {r / cores:7.0f} images/s per core  {1e3 * cores / r:6.2f} ms")
  shutil.rmtree(cache_dir)


if __name__ == "__main__":
  main()
