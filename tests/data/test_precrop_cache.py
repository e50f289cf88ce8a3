"""The pre-crop cache: the same examples and batches as the in-memory pre-crop, bit for bit
and for any number of processes; each process builds only its shards; a killed build resumes;
the key follows what the crops depend on; damage is named."""

import os

import numpy as np
import pytest
import tensorflow as tf

import helpers
from jaxpose.data import datasets
from jaxpose.data import pipeline
from jaxpose.data import precrop_cache

AUGMENT = pipeline.Augment(rotation=30.0, scale=0.25)
SIZE = 32


@pytest.fixture(name="small_shards")
def _small_shards(monkeypatch):
  monkeypatch.setattr(precrop_cache, "EXAMPLES_PER_SHARD", 8)


def _split(source, reads=None):
  """A cache Split over an in-memory source; `reads` records the ranges read."""

  def read(begin, end):
    if reads is not None:
      reads.append((begin, end))
    return pipeline.subset(source, np.arange(begin, end))

  return precrop_cache.Split(name="dots/train", fingerprint={"seed": 0},
                             num_examples=source.num_examples, skeleton=source.skeleton,
                             read=read)


def _load(split, cache_dir, augment=AUGMENT, **kwargs):
  return precrop_cache.load(split, str(cache_dir), input_size=SIZE, augment=augment, **kwargs)


def _batches(source, steps, process_index=0, process_count=1, on_device=True):
  ds = pipeline.train_dataset(source, input_size=SIZE, target_fn=None, augment=AUGMENT,
                              global_batch_size=4, seed=3, process_index=process_index,
                              process_count=process_count, on_device=on_device)
  return [b for b, _ in zip(ds.as_numpy_iterator(), range(steps))]


def test_the_cache_gives_the_in_memory_precrop_bit_for_bit(small_shards, tmp_path):
  source = helpers.dots_source(n=20, size=48)
  memory = pipeline.precrop(source, input_size=SIZE, augment=AUGMENT)
  cached = _load(_split(source), tmp_path)
  assert isinstance(cached.images, precrop_cache.ImageShards)
  assert cached.num_examples == 20 and cached.side == memory.side
  assert len(cached.images.paths) == 3  # 8 + 8 + 4 examples.
  for k, v in memory.annotations.items():
    np.testing.assert_array_equal(cached.annotations[k], v, k)
  np.testing.assert_array_equal(cached.encoded(tf.range(20)).numpy(), memory.images.numpy())
  # Batches of one process, and of each of two processes: the same pixels and geometry.
  whole = _batches(memory, 6)
  for b_cached, b_memory in zip(_batches(cached, 6), whole):
    for k in b_memory:
      np.testing.assert_array_equal(b_cached[k], b_memory[k], k)
  halves = [_batches(cached, 6, p, 2) for p in (0, 1)]
  for step, b in enumerate(whole):
    for k in b:
      np.testing.assert_array_equal(
          np.concatenate([halves[0][step][k], halves[1][step][k]]), b[k], k)
  # The host-augmented path and a subset (the phase hooks' sample) read the same bytes too.
  np.testing.assert_array_equal(_batches(cached, 2, on_device=False)[1]["image"],
                                _batches(memory, 2, on_device=False)[1]["image"])
  some = pipeline.subset(cached, [19, 2, 9])
  np.testing.assert_array_equal(some.encoded(tf.range(3)).numpy(),
                                memory.images.numpy()[[19, 2, 9]])


def test_each_process_builds_only_its_shards_and_a_killed_build_resumes(small_shards,
                                                                        tmp_path):
  source = helpers.dots_source(n=20, size=48)
  reads = []
  split = _split(source, reads)
  inputs = precrop_cache.key_inputs(split, input_size=SIZE, augment=AUGMENT, quality=90)
  path = precrop_cache.folder(str(tmp_path), split, inputs)
  precrop_cache.build(split, path, input_size=SIZE, augment=AUGMENT, quality=90,
                      process_index=1, process_count=2)
  assert reads == [(8, 16)]  # Shard 1 only: the other process's photos are never read.
  assert not precrop_cache.is_complete(path)
  with pytest.raises(RuntimeError, match=r"shards \[0, 2\] missing"):
    precrop_cache.write_meta(path, inputs)
  # Process 0 "dies" after its first shard; the re-run builds only what is missing.
  precrop_cache.build_shard(split, path, 0, input_size=SIZE, augment=AUGMENT, quality=90)
  reads.clear()
  cached = _load(split, tmp_path)
  assert reads == [(16, 20)]
  assert precrop_cache.is_complete(path)
  assert not [f for f in os.listdir(path) if ".tmp-" in f]
  reads.clear()
  again = _load(split, tmp_path)  # Complete: nothing is read or built.
  assert reads == []
  np.testing.assert_array_equal(again.encoded(tf.range(20)).numpy(),
                                cached.encoded(tf.range(20)).numpy())


def test_the_key_follows_what_the_stored_crops_depend_on(tmp_path):
  split = _split(helpers.dots_source(n=4, size=48))

  def path(augment, size=SIZE, quality=90):
    inputs = precrop_cache.key_inputs(split, input_size=size, augment=augment, quality=quality)
    return precrop_cache.folder(str(tmp_path), split, inputs)

  base = path(AUGMENT)
  assert os.path.basename(base).startswith("dots-train-")
  assert path(pipeline.Augment(rotation=30.0, scale=0.25, color=0.0, flip=False)) == base
  for other in (path(pipeline.Augment(rotation=40.0, scale=0.25)),
                path(pipeline.Augment(rotation=30.0, scale=0.3)), path(None),
                path(AUGMENT, size=64), path(AUGMENT, quality=95)):
    assert other != base
  raw = precrop_cache.key_inputs(split, input_size=SIZE, augment=AUGMENT, quality=90,
                                 image_format="raw")
  assert precrop_cache.folder(str(tmp_path), split, raw) != base
  with pytest.raises(ValueError, match="precrop_format"):
    precrop_cache.key_inputs(split, input_size=SIZE, augment=AUGMENT, quality=90,
                             image_format="webp")
  changed = precrop_cache.Split(name=split.name, fingerprint={"seed": 1},
                                num_examples=4, skeleton=split.skeleton, read=split.read)
  inputs = precrop_cache.key_inputs(changed, input_size=SIZE, augment=AUGMENT, quality=90)
  assert precrop_cache.folder(str(tmp_path), changed, inputs) != base


def test_a_raw_cache_gives_the_in_memory_raw_precrop_bit_for_bit(small_shards, tmp_path):
  source = helpers.dots_source(n=20, size=48)
  memory = pipeline.precrop(source, input_size=SIZE, augment=AUGMENT, image_format="raw")
  cached = _load(_split(source), tmp_path, image_format="raw")
  assert all(p.endswith(".raw") for p in cached.images.paths)
  assert cached.images.view(3) == memory.images.numpy()[3]
  np.testing.assert_array_equal(cached.encoded(tf.range(20)).numpy(), memory.images.numpy())
  # The uint8 crops read from the files' memory maps (pipeline.read_and_warp_uint8) and
  # through TensorFlow strings (decode_and_warp_uint8); and the host's float crops.
  for on_device, key in ((True, pipeline.CROP), (False, "image")):
    for b_cached, b_memory in zip(_batches(cached, 3, on_device=on_device),
                                  _batches(memory, 3, on_device=on_device)):
      np.testing.assert_array_equal(b_cached[key], b_memory[key], key)
  # A JPEG cache of the same split is another folder, with crops near these (the dots'
  # random-noise backgrounds are JPEG's worst case: ~5/255 apart on average).
  jpeg = _load(_split(source), tmp_path)
  assert os.path.dirname(jpeg.images.paths[0]) != os.path.dirname(cached.images.paths[0])
  diff = np.abs(_batches(jpeg, 1)[0][pipeline.CROP].astype(np.float32)
                - _batches(cached, 1)[0][pipeline.CROP])
  assert 0 < diff.mean() < 8.0


def test_a_damaged_cache_is_named(small_shards, tmp_path):
  cached = _load(_split(helpers.dots_source(n=10, size=48)), tmp_path)
  shard = cached.images.paths[1]
  with open(shard, "r+b") as f:
    f.truncate(10)
  with pytest.raises(IOError, match="shard-00001.jpegs.*delete that folder"):
    cached.images.read(9)
  with pytest.raises(IOError, match="shard-00001.jpegs.*image 9 ends at.*delete that folder"):
    cached.images.view(9)


def test_training_split_through_tfds_builds_once_and_matches_memory(tmp_path, monkeypatch):
  config = _with(helpers.tiny_config(tmp_path / "tfds").dataset)  # Pre-crop, cached.
  memory = datasets.load_training_source(
      _with(config, precrop_cache=False), input_size=SIZE, augment=AUGMENT)
  cached = datasets.load_training_source(config, input_size=SIZE, augment=AUGMENT)
  [folder] = os.listdir(tmp_path / "tfds" / "jaxpose_precrop")
  assert folder.startswith("synthetic-train-")
  np.testing.assert_array_equal(cached.encoded(tf.range(cached.num_examples)).numpy(),
                                memory.images.numpy())
  for k, v in memory.annotations.items():
    np.testing.assert_array_equal(cached.annotations[k], v, k)

  def no_photos(*args):
    raise AssertionError(f"read the photos again: {args}")

  monkeypatch.setattr(datasets, "_read", no_photos)
  datasets.load_training_source(config, input_size=SIZE, augment=AUGMENT)
  other = tmp_path / "elsewhere"
  with pytest.raises(AssertionError, match="read the photos again"):
    datasets.load_training_source(_with(config, precrop_cache_dir=str(other)),
                                  input_size=SIZE, augment=AUGMENT)


def _with(dataset, **fields):
  dataset = dataset.copy_and_resolve_references()
  dataset.precrop = True
  dataset.update(fields)
  return dataset
