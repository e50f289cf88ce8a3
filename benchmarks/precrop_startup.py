r"""Start-up time and memory of a training host: the pre-crop in memory against its cache.

  python benchmarks/precrop_startup.py                     # 2,048 people, ~3 min of set-up
  python benchmarks/precrop_startup.py --people 4096 --threads 2

Data: --people photo-like 1280x720 JPEGs (benchmarks/pipeline_throughput.py's generator, ~450
KB each, one MPII-sized person per photo), written once as files under --data with their
annotations; read back the way a TFDS split is (the photos' bytes into memory). Each figure
comes from a fresh process (`--child`), pinned to --threads tf.data threads:

  in memory        what every host did at every start before the cache (config.dataset.
                   precrop_cache = False): read the whole split's photos into memory, then
                   pipeline.precrop all of it
  cache, cold      precrop_cache.load into an empty folder: one host builds every shard
  cache, cold 1/2  the same when two hosts share the build: process 0 of 2 builds its shards
                   only (the other half is built at the same time elsewhere)
  cache, warm      precrop_cache.load of the complete folder: what every later start does

and after each, the same 40 training batches of 8 (`pipeline.train_dataset`, on-device
augmentation: the host decodes the stored crops) to show that reading from the cache's files
costs no throughput. Reported: seconds from the call to a usable source, peak RSS of the process
(VmHWM) and its RSS after the imports, and the batches' images/s. Writes --out (JSON).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

# pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf

from jaxpose import host_memory
from jaxpose import skeletons
from jaxpose.data import pipeline
from jaxpose.data import precrop_cache

INPUT_SIZE = 256
AUGMENT = pipeline.Augment()  # The paper configs' augmentation (what the stored square covers).
MODES = ("in memory", "cache, cold 1/2", "cache, cold", "cache, warm")


def make_data(folder: str, people: int) -> None:
  """Writes the photos and annotations once (kept for later runs)."""
  import pipeline_throughput  # The photo generator; imported here (it imports JAX).
  marker = os.path.join(folder, "annotations.npz")
  if os.path.exists(marker) and len(np.load(marker)["id"]) == people:
    return
  os.makedirs(folder, exist_ok=True)
  source = pipeline_throughput.make_source(people)
  for i, data in enumerate(source.images.numpy()):
    with open(os.path.join(folder, f"{i:06d}.jpg"), "wb") as f:
      f.write(data)
  np.savez(marker, **source.annotations)


def split(folder: str) -> precrop_cache.Split:
  annotations = dict(np.load(os.path.join(folder, "annotations.npz")))
  n = len(annotations["id"])

  def read(begin, end):  # As a TFDS split is read: every photo's bytes into memory.
    images = [tf.io.read_file(os.path.join(folder, f"{i:06d}.jpg")) for i in range(begin, end)]
    return pipeline.Source(f"photos[{begin}:{end}]", tf.stack(images),
                           {k: v[begin:end] for k, v in annotations.items()}, skeletons.MPII)

  return precrop_cache.Split(name="photos/train", fingerprint={"people": n}, num_examples=n,
                             skeleton=skeletons.MPII, read=read)


def memory_mb(field: str) -> float:
  """/proc/self/status's VmRSS (now) or VmHWM (peak) in MB (`host_memory.status_bytes`; not
  ru_maxrss, which Linux carries over from the parent across fork + exec: here, the parent
  holding the photos)."""
  return host_memory.status_bytes(field) / 2**20


def child(mode: str, data: str, cache: str, threads: int) -> dict:
  tf.config.threading.set_inter_op_parallelism_threads(threads)
  tf.config.threading.set_intra_op_parallelism_threads(threads)
  after_imports = memory_mb("VmRSS")
  the_split = split(data)
  start = time.perf_counter()
  if mode == "in memory":
    source = pipeline.precrop(the_split.read(0, the_split.num_examples), input_size=INPUT_SIZE,
                              augment=AUGMENT)
  elif mode == "cache, cold 1/2":
    inputs = precrop_cache.key_inputs(the_split, input_size=INPUT_SIZE, augment=AUGMENT,
                                      quality=90)
    precrop_cache.build(the_split, precrop_cache.folder(cache, the_split, inputs),
                        input_size=INPUT_SIZE, augment=AUGMENT, quality=90, process_index=0,
                        process_count=2)
    source = None
  else:
    source = precrop_cache.load(the_split, cache, input_size=INPUT_SIZE, augment=AUGMENT)
  seconds = time.perf_counter() - start
  record = {"mode": mode, "seconds": seconds, "rss_after_imports_mb": after_imports,
            "rss_ready_mb": memory_mb("VmRSS")}
  if source is not None:
    ds = pipeline.train_dataset(source, input_size=INPUT_SIZE, target_fn=None, augment=AUGMENT,
                                global_batch_size=8, seed=0, on_device=True,
                                resample_on_device=True)  # The host decodes only (docs/DATA.md).
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    it = ds.with_options(options).as_numpy_iterator()
    for _ in range(5):
      next(it)
    t = time.perf_counter()
    for _ in range(40):
      next(it)
    record["images_per_s"] = 40 * 8 / (time.perf_counter() - t)
  record["peak_rss_mb"] = memory_mb("VmHWM")
  return record


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--people", type=int, default=2048)
  parser.add_argument("--threads", type=int, default=1)
  parser.add_argument("--data", default="/tmp/jaxpose_precrop_bench")
  parser.add_argument("--out", default=os.path.join(REPO, "runs", "precrop_startup.json"))
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args()
  photos, cache = os.path.join(args.data, f"photos{args.people}"), os.path.join(args.data, "cache")
  if args.child:
    print("@@" + json.dumps(child(args.child, photos, cache, args.threads)))
    return
  start = time.perf_counter()
  make_data(photos, args.people)
  mb = sum(os.path.getsize(os.path.join(photos, f)) for f in os.listdir(photos)) / 2**20
  print(f"{args.people} photo-like 1280x720 JPEGs, {mb:.0f} MB (ready in "
        f"{time.perf_counter() - start:.0f} s); {args.threads} tf.data thread(s), load "
        f"{os.getloadavg()[0]:.1f}")
  records = []
  for mode in MODES:
    if mode.startswith("cache, cold"):
      shutil.rmtree(cache, ignore_errors=True)
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--people",
                          str(args.people), "--threads", str(args.threads), "--data", args.data],
                         capture_output=True, text=True, check=True).stdout
    record = json.loads(next(l for l in out.splitlines() if l.startswith("@@"))[2:])
    records.append(record)
    rate = record.get("images_per_s")
    print(f"{mode:16s} ready in {record['seconds']:7.1f} s   peak RSS {record['peak_rss_mb']:6.0f}"
          f" MB (after imports {record['rss_after_imports_mb']:.0f})"
          + (f"   then {rate:.0f} images/s" if rate else ""))
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"people": args.people, "photo_mb": mb, "threads": args.threads,
               "records": records}, f, indent=1)


if __name__ == "__main__":
  main()
