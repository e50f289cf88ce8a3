"""The pre-cropped training split as a cached build on disk, shared by every host.

`pipeline.precrop` keeps of each photo only the square its training crops can reach. Done in
memory at every start, every host first loads the whole split's photos (MPII: ~5 GB of JPEG,
each photo once per person in it) and pre-crops all of it (~5 min a core for MPII). Here it
is built once into a folder keyed by everything its content depends on, and read from there:

  <cache_dir>/<data set>-<split>-<key>/
    shard-00000.jpegs   the shard's pre-cropped JPEGs, back to back (.raw: the "raw" format's)
    shard-00000.npz     their byte offsets, the annotations in the stored pixels, the side
    ...
    meta.json           written last: the build is complete (what the key was made of)

Shard s holds examples [s * E, (s + 1) * E) of the split (E = `EXAMPLES_PER_SHARD`), so the
layout does not depend on the number of processes. Building: process p of P builds shards
p, p + P, ... (reading only those examples' photos, through TFDS's split slicing); a shard's
files appear by an atomic rename, so a build that was killed resumes at the first missing
shard; process 0 writes meta.json once every process is done. Reading: every host holds the
annotations (~100 bytes a person) and reads each JPEG it needs by offset, when its batches need
it (`ImageShards`): no host holds the split's images, and the batches are the same as from the
in-memory pre-crop, bit for bit and for any number of processes, because the pipeline still
picks examples by their index in the split (`pipeline.train_dataset`).

The key: the data set's name, config, version and split sizes (TFDS's record of what it
built), the crop size, the part of the augmentation the stored square depends on (its reach
and the most zoomed-in scale), the JPEG quality, the image format and this layout's version.
Colour jitter, flips, seeds or the model change nothing stored and share a cache.

The image format (config.dataset.precrop_format): "jpeg" (the default, ~77 KB for a 589 px MPII
pre-crop) or "raw" (`pipeline.encode_raw`: the pixels, ~1 MB, 13x the disk). A JPEG pre-crop
costs a core ~1.2 ms to decode, which bounds the host at ~700 crops/s per core; a raw one is
resampled where it lies in the file's memory map (`ImageShards.view`), ~2,500-2,700 crops/s per
core (`python benchmarks/pipeline_throughput.py`): for hosts short of cores per accelerator and
with the disk (or the page cache) to hold it.
"""

import dataclasses
import hashlib
import io
import json
import mmap
import os
import threading
from typing import Callable

import numpy as np
import tensorflow as tf

from jaxpose import progress
from jaxpose import skeletons
from jaxpose.data import pipeline

FORMAT_VERSION = 1
EXAMPLES_PER_SHARD = 256  # Bounds a build's memory: one shard's photos at a time.
META = "meta.json"


@dataclasses.dataclass(frozen=True)
class Split:
  """What the cache needs of one split of a data set (`datasets.cache_split` makes one)."""

  name: str  # e.g. "mpii/train": the folder's prefix and the messages'.
  fingerprint: dict  # JSON-able: identifies the split's content (a changed value rebuilds).
  num_examples: int
  skeleton: skeletons.Skeleton
  read: Callable[[int, int], pipeline.Source]  # Examples [begin, end), images encoded.


@dataclasses.dataclass(frozen=True, eq=False)
class ImageShards:
  """Encoded images in shard files, read by byte offset when a pipeline asks for them
  (`pipeline.EncodedImages`). Local files are read with pread on descriptors opened once per
  process; other paths (gs://...) through tf.io.gfile."""

  paths: tuple[str, ...]
  shard: np.ndarray  # [N] int32: the file of each image
  offset: np.ndarray  # [N] int64: where it starts in that file
  length: np.ndarray  # [N] int64: its size in bytes

  def __len__(self) -> int:
    return len(self.shard)

  def take(self, indices) -> "ImageShards":
    indices = np.asarray(indices)
    return dataclasses.replace(self, shard=self.shard[indices], offset=self.offset[indices],
                               length=self.length[indices])

  def read(self, i: int) -> bytes:
    path, offset, length = self.paths[self.shard[i]], int(self.offset[i]), int(self.length[i])
    data = (os.pread(_descriptor(path), length, offset) if "://" not in path
            else _read_remote(path, offset, length))
    if len(data) != length:
      raise IOError(f"{path}: {len(data)} bytes at offset {offset}, expected {length} "
                    "(the pre-crop cache is damaged: delete that folder to rebuild it).")
    return data

  def view(self, i: int) -> bytes | memoryview:
    """Image i's bytes for numpy code: local files through a read-only memory map, no copy
    (the pages stay the OS's file cache, counted in RSS once touched but never dirty)."""
    path = self.paths[self.shard[i]]
    if "://" in path:
      return self.read(i)
    offset, length = int(self.offset[i]), int(self.length[i])
    mapped = _mapping(path)
    if offset + length > len(mapped):
      raise IOError(f"{path}: {len(mapped)} bytes, image {i} ends at {offset + length} "
                    "(the pre-crop cache is damaged: delete that folder to rebuild it).")
    return mapped[offset:offset + length]

  def gather(self, index) -> tf.Tensor:
    index = tf.cast(index, tf.int64)

    def read_many(flat):
      return np.array([self.read(int(i)) for i in flat], dtype=object)

    flat = tf.numpy_function(read_many, [tf.reshape(index, [-1])], tf.string, stateful=False)
    return tf.reshape(flat, tf.shape(index))


_DESCRIPTORS: dict[str, int] = {}
_LOCK = threading.Lock()


def _descriptor(path: str) -> int:
  with _LOCK:
    return _descriptor_locked(path)


def _descriptor_locked(path: str) -> int:
  if path not in _DESCRIPTORS:
    _DESCRIPTORS[path] = os.open(path, os.O_RDONLY)
  return _DESCRIPTORS[path]


_MAPPINGS: dict[str, memoryview] = {}


def _mapping(path: str) -> memoryview:
  with _LOCK:
    if path not in _MAPPINGS:
      size = os.fstat(_descriptor_locked(path)).st_size
      _MAPPINGS[path] = (memoryview(mmap.mmap(_descriptor_locked(path), size,
                                              access=mmap.ACCESS_READ))
                         if size else memoryview(b""))
    return _MAPPINGS[path]


def _read_remote(path: str, offset: int, length: int) -> bytes:
  with tf.io.gfile.GFile(path, "rb") as f:
    f.seek(offset)
    return f.read(length)


# ---------------------------------------------------------------------------------------------
# The key and the folder.


def key_inputs(split: Split, *, input_size: int, augment: pipeline.Augment | None,
               quality: int, image_format: str = "jpeg") -> dict:
  """Everything the stored crops depend on (`pipeline.precrop_geometry`'s inputs)."""
  pipeline.check_image_format(image_format)
  inputs = {"format": FORMAT_VERSION, "split": split.name, "data": split.fingerprint,
            "num_examples": split.num_examples, "input_size": int(input_size),
            "reach": round(pipeline.reach(augment), 9),
            "zoom_in": round(1.0 - (augment.scale if augment is not None else 0.0), 9),
            "quality": int(quality), "examples_per_shard": EXAMPLES_PER_SHARD}
  if image_format != "jpeg":  # Absent for JPEG: caches built before "raw" existed stay valid.
    inputs["image_format"] = image_format
  return inputs


def folder(cache_dir: str, split: Split, inputs: dict) -> str:
  digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
  return os.path.join(cache_dir, f"{split.name.replace('/', '-')}-{digest}")


def _shard_paths(path: str, shard: int, image_format: str = "jpeg") -> tuple[str, str]:
  stem = os.path.join(path, f"shard-{shard:05d}")
  return stem + (".jpegs" if image_format == "jpeg" else f".{image_format}"), stem + ".npz"


def num_shards(num_examples: int) -> int:
  return -(-num_examples // EXAMPLES_PER_SHARD)


# ---------------------------------------------------------------------------------------------
# Building and opening.


def _write_atomically(path: str, data: bytes) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with tf.io.gfile.GFile(tmp, "wb") as f:
    f.write(data)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def build_shard(split: Split, path: str, shard: int, *, input_size: int,
                augment: pipeline.Augment | None, quality: int, image_format: str = "jpeg",
                on_chunk: Callable[[int], object] = lambda n: None) -> None:
  """Pre-crops examples [shard * E, (shard + 1) * E) into the shard's two files. The offsets
  file is renamed into place last: a shard is complete when it exists."""
  begin = shard * EXAMPLES_PER_SHARD
  end = min(begin + EXAMPLES_PER_SHARD, split.num_examples)
  source = split.read(begin, end)
  if source.num_examples != end - begin:
    raise ValueError(f"{split.name}: reading examples [{begin}, {end}) gave "
                     f"{source.num_examples}; the data set changed under the cache.")
  images, annotations, side = pipeline.precrop_arrays(
      source, input_size=input_size, augment=augment, quality=quality,
      image_format=image_format, on_chunk=on_chunk)
  lengths = np.array([len(x) for x in images], np.int64)
  data, index = _shard_paths(path, shard, image_format)
  _write_atomically(data, b"".join(images))
  buffer = io.BytesIO()
  np.savez(buffer, offset=np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64),
           length=lengths, side=np.int64(side), **{f"ann_{k}": v for k, v in annotations.items()})
  _write_atomically(index, buffer.getvalue())


def build(split: Split, path: str, *, input_size: int, augment: pipeline.Augment | None,
          quality: int, image_format: str = "jpeg", process_index: int = 0,
          process_count: int = 1) -> None:
  """Builds this process's missing shards (p, p + P, ...)."""
  tf.io.gfile.makedirs(path)
  mine = [s for s in range(process_index, num_shards(split.num_examples), process_count)
          if not tf.io.gfile.exists(_shard_paths(path, s)[1])]
  todo = sum(min(EXAMPLES_PER_SHARD, split.num_examples - s * EXAMPLES_PER_SHARD) for s in mine)
  with progress.bar(todo, f"pre-crop {split.name} into the cache", min_total=1000) as shown:
    for s in mine:
      build_shard(split, path, s, input_size=input_size, augment=augment, quality=quality,
                  image_format=image_format, on_chunk=shown.update)


def write_meta(path: str, inputs: dict) -> None:
  """Marks the build complete (after every shard exists)."""
  missing = [s for s in range(num_shards(inputs["num_examples"]))
             if not tf.io.gfile.exists(_shard_paths(path, s)[1])]
  if missing:
    raise RuntimeError(f"Pre-crop cache {path}: shards {missing} missing after the build.")
  _write_atomically(os.path.join(path, META), json.dumps(inputs, indent=1).encode())


def is_complete(path: str) -> bool:
  return tf.io.gfile.exists(os.path.join(path, META))


def open_source(split: Split, path: str) -> pipeline.Source:
  """The pre-cropped split from a complete cache folder: annotations in memory, the images
  read from the shard files on demand."""
  with tf.io.gfile.GFile(os.path.join(path, META), "rb") as f:
    meta = json.loads(f.read())
  n = meta["num_examples"]
  parts, paths, shard_of, side = [], [], [], 0
  for s in range(num_shards(n)):
    data, index = _shard_paths(path, s, meta.get("image_format", "jpeg"))
    with tf.io.gfile.GFile(index, "rb") as f:
      with np.load(io.BytesIO(f.read())) as z:
        parts.append({k: z[k] for k in z.files})
    paths.append(data)
    shard_of.append(np.full(len(parts[-1]["length"]), s, np.int32))
    side = max(side, int(parts[-1]["side"]))
  annotations = {k[4:]: np.concatenate([p[k] for p in parts]) for k in parts[0]
                 if k.startswith("ann_")}
  images = ImageShards(paths=tuple(paths), shard=np.concatenate(shard_of),
                       offset=np.concatenate([p["offset"] for p in parts]),
                       length=np.concatenate([p["length"] for p in parts]))
  if len(images) != n:
    raise ValueError(f"Pre-crop cache {path}: {len(images)} examples, meta.json says {n} "
                     "(delete the folder to rebuild it).")
  return pipeline.Source(name=f"{split.name} (pre-cropped, cached)", images=images,
                         annotations=annotations, skeleton=split.skeleton, side=side)


def load(split: Split, cache_dir: str, *, input_size: int, augment: pipeline.Augment | None,
         quality: int = 90, image_format: str = "jpeg", process_index: int = 0,
         process_count: int = 1,
         sync: Callable[[str], object] = lambda name: None) -> pipeline.Source:
  """The pre-cropped split, built into `cache_dir` first if it is not there (every process
  calls this; `sync(name)` is a barrier across them)."""
  if split.num_examples <= 0:
    raise ValueError(f"Data set {split.name!r} is empty.")
  inputs = key_inputs(split, input_size=input_size, augment=augment, quality=quality,
                      image_format=image_format)
  path = folder(cache_dir, split, inputs)
  if not is_complete(path):
    build(split, path, input_size=input_size, augment=augment, quality=quality,
          image_format=image_format,
          process_index=process_index, process_count=process_count)
    sync(f"pre-crop cache {path}: shards built")
    if process_index == 0:
      write_meta(path, inputs)
    sync(f"pre-crop cache {path}: complete")
  return open_source(split, path)
