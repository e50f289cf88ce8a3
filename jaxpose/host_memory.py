"""Gives the XLA compiler's freed heap back to the OS, so a process's peak is its programs'.

Compiling a program allocates and frees hundreds of MB of small objects (HLO, LLVM IR) through
malloc. glibc keeps the freed pages in its arenas, and the buffers a step then allocates, large
enough for glibc to serve by mmap, cannot reuse them: the compiler's garbage stays resident under
the step's peak. `trim_after_compiles` asks glibc to release it (`malloc_trim(0)`) after every
backend compilation (or persistent-cache load). Measured on the 2-stack hourglass at batch 8 on
a 2-core CPU (`steps.create_train_state`, then one `steps.make_train_step` step): peak RSS 3,460
-> 2,996 MB, ~0.1 s per trim. A no-op where the C library has no `malloc_trim` (macOS, musl).
Under the tunables `train.py` and `eval.py` start with (`jaxpose.huge_pages`: no `mmap` per large
block, no automatic trim) the step's buffers come from the heap too, and these trims are then
the only times the process hands freed memory back.

`Prefault` and `TemporariesRecord`: a training process's first step, on a CPU, finds its
temporaries in memory touched while its program was read, instead of faulting fresh pages in
(`steps.compile_ahead(..., prefault=True)`; the module's second half says why and what it saves).
"""

import concurrent.futures
import contextlib
import ctypes
import functools
import hashlib
import json
import mmap
import os
import resource
import sys
import tempfile
import threading
import time

import jax
import numpy as np

from jaxpose import huge_pages

# What jax.monitoring calls the event it records after each backend compilation (or cache load).
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"

_STATS = {"trims": 0, "seconds": 0.0}


@functools.cache
def _malloc_trim():
  try:
    return ctypes.CDLL(None).malloc_trim  # glibc
  except (OSError, AttributeError):
    return None


def trim() -> bool:
  """Releases free heap pages to the OS now; False where that is not available."""
  fn = _malloc_trim()
  if fn is None:
    return False
  start = time.perf_counter()
  fn(0)
  _STATS["trims"] += 1
  _STATS["seconds"] += time.perf_counter() - start
  return True


def _listener(event: str, duration: float, **kwargs) -> None:
  del duration, kwargs
  if event == BACKEND_COMPILE_EVENT:
    trim()


@functools.cache
def trim_after_compiles() -> None:
  """Trims after every compilation from now on, in this process (idempotent)."""
  if _malloc_trim() is not None:
    jax.monitoring.register_event_duration_secs_listener(_listener)


def stats() -> dict:
  """How many trims ran and the seconds they took, in this process."""
  return dict(_STATS)


# ---------------------------------------------------------------------------------------------
# The first step's temporaries, touched ahead of it.
#
# XLA's CPU runtime maps each execution's temporaries afresh (`mmap` by malloc on the runtime's
# worker threads: glibc's arenas other than the main one map a block larger than their heaps
# whatever `mmap_max` says; `strace` of the 2-stack hourglass's steps: one 1,556,303,872-byte
# `mmap` and `munmap` each) and unmaps them after it. A later step's pages are the ones the step
# before gave back a moment earlier, which the kernel has at hand. The first step's are not: on
# a virtual machine whose balloon reports free memory to its host (docs/performance_log.md: "Huge
# pages"), the host backs each of them again at its first touch. The 2-stack's first step took
# ~5.1-5.8 s against ~2.8 s for the next ones (batch 8, 1,484 MiB of temporaries). `Prefault`
# touches fresh memory on a thread of its own while the step's program is read (or compiled)
# and the state is made, on the core those leave idle, and unmaps it just before the first
# step, whose temporaries then land on pages the kernel has just been given back. Touching
# with malloc, or freeing the block before the program was read, did not help (the heap kept
# the block, or the host took its pages back).
#
# Held while the program is read, those pages stand beside what the read and the initialiser
# hold. Touched in full (the 2-stack's 1,484 MiB, the 8-stack's 4,192), they raised the peak RSS
# to the first step by 120-200 MB and ~930 MB. So a prefault touches in chunks only while the
# process's RSS stays under the peak an earlier process of the same program reached at its
# first step, and hands chunks back when the read grows past it: the peak stays that run's.
#
# How much to touch, and that peak, are known only once the step has run, too late for its
# first run: they are remembered, by program, beside the persistent compilation cache
# (`TemporariesRecord`), so a process gains from it when an earlier one ran the same step.
# Measured (`python benchmarks/models.py --models hourglass2 --measure cold,warm`, one process
# each, A/B by $JAXPOSE_PREFAULT, 2026-12-05): the 2-stack's warm start to its first step done
# 0.88x the time (11.10 / 11.17 s against 12.76 / 12.64 s), the 8-stack's 0.94x (51.4 against
# 54.6 s), the peak RSS to it unchanged (2,112 / 2,148 against 2,114 / 2,113 MB; 5,688 against
# 5,683 MB); docs/performance_log.md: "The first step's pages, touched while its program is read".

RECORD_FILE = "jaxpose_step_temporaries.json"  # In the persistent compilation cache's directory.
PREFAULT_VARIABLE = "JAXPOSE_PREFAULT"  # "0": no prefault, no record.
_MAX_RECORDS = 64
_PAGE = 4096
_CHUNK = 64 << 20


def program_key(lowered: jax.stages.Lowered) -> str:
  """A lowered program's identity for `TemporariesRecord` (SHA-256 of its text: 0.13 s for
  the 2-stack hourglass's train step)."""
  return hashlib.sha256(lowered.as_text().encode()).hexdigest()


def status_bytes(field: str) -> int:
  """A size from /proc/self/status (Linux), in bytes: "VmRSS" (the resident set now) or
  "VmHWM" (its peak); 0 where unknown. The peak is not `ru_maxrss`, which Linux carries over
  from the parent across fork + exec (a child of a large process reads the parent's)."""
  try:
    with open("/proc/self/status") as f:
      line = next(l for l in f if l.startswith(field + ":"))
    return int(line.split()[1]) * 1024  # kB.
  except (OSError, ValueError, IndexError, StopIteration):
    return 0


def resident_bytes() -> int:
  return status_bytes("VmRSS")


def peak_resident_bytes() -> int:
  return status_bytes("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_cache_directory() -> str | None:
  """The persistent compilation cache's directory, where it is a local one and the default
  backend is the CPU (where what is kept beside it, `TemporariesRecord` and
  `step_store.StepStore`, was measured); else None."""
  cache_dir = jax.config.jax_compilation_cache_dir
  if not cache_dir or jax.default_backend() != "cpu" or not os.path.isdir(cache_dir):
    return None
  return cache_dir


def replace_file(path: str, data: bytes, prefix: str) -> None:
  """Writes `data` as `path` whole: to a temporary file (`prefix`...) beside it, then
  `os.replace`, so that another process never reads half of it. Raises OSError."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=prefix)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def on_thread(name: str, fn, *args) -> concurrent.futures.Future:
  """A future of fn(*args), run on a thread of its own (named `name`...) that ends with it."""
  executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=name)
  future = executor.submit(fn, *args)
  executor.shutdown(wait=False)
  return future


class TemporariesRecord:
  """What the programs compiled on this machine took, by `program_key`: {"temporaries": bytes
  of XLA's temporaries, "peak_rss": the process's peak RSS when its first run was done}. A
  small JSON file (the last 64 programs), read and replaced whole (`os.replace`), so processes
  sharing it never see half a file; one that cannot be read counts as empty."""

  def __init__(self, path: str):
    self.path = path

  @classmethod
  def beside_cache(cls) -> "TemporariesRecord | None":
    """The record in the persistent compilation cache's directory, or None where a prefault
    would not apply: not Linux, the default backend is not the CPU, no local cache
    directory, or $JAXPOSE_PREFAULT is "0"."""
    if os.environ.get(PREFAULT_VARIABLE, "1") == "0" or not sys.platform.startswith("linux"):
      return None
    cache_dir = cpu_cache_directory()
    return None if cache_dir is None else cls(os.path.join(cache_dir, RECORD_FILE))

  def _read(self) -> dict:
    try:
      with open(self.path) as f:
        records = json.load(f)
    except (OSError, ValueError):
      return {}
    return records if isinstance(records, dict) else {}

  def get(self, key: str) -> tuple[int, int] | None:
    """(temporaries, peak RSS) in bytes, or None if unknown (or malformed)."""
    entry = self._read().get(key)
    if not isinstance(entry, dict):
      return None
    values = entry.get("temporaries"), entry.get("peak_rss")
    return values if all(isinstance(v, int) and v > 0 for v in values) else None

  def put(self, key: str, temporaries: int, peak_rss: int) -> None:
    records = self._read()
    records.pop(key, None)
    records[key] = {"temporaries": int(temporaries), "peak_rss": int(peak_rss)}  # Newest last.
    records = dict(list(records.items())[-_MAX_RECORDS:])
    with contextlib.suppress(OSError):
      replace_file(self.path, json.dumps(records).encode(), prefix=".step_temporaries")

  def remember(self, key: str, compiled: jax.stages.Compiled, peak_rss: int) -> None:
    """Records `compiled`'s temporaries (XLA's memory analysis: 0.3 s for the 2-stack's step)
    and `peak_rss` (the process's peak once its first run was done), then gives the
    analysis's freed heap back (`trim`)."""
    analysis = compiled.memory_analysis()
    nbytes = getattr(analysis, "temp_size_in_bytes", 0) if analysis is not None else 0
    if nbytes > 0:
      self.put(key, nbytes, peak_rss)
    trim()


class Prefault:
  """Up to `nbytes` of fresh anonymous memory, mapped and written once per 4 KB page in chunks
  of 64 MB on a thread of its own (in 2 MB pages where the process's malloc asks for them:
  `jaxpose.huge_pages`), never above `budget` bytes of the process's RSS: a chunk is touched
  only while the RSS stays under it, and chunks are handed back (newest first) while it is
  above it, until `release()` unmaps them all. The thread is a daemon: a process that never
  releases them (its step never ran) still exits."""

  def __init__(self, nbytes: int, budget: int, poll_s: float = 0.02):
    self.nbytes, self.budget, self.poll_s = int(nbytes), int(budget), poll_s
    self.touched = 0  # Bytes touched, in all.
    self.seconds = None  # The touch's, once it ended; None if it failed.
    self._chunks = []
    self._stop = threading.Event()
    self.touch_ended = threading.Event()  # Set once no more chunks will be touched.
    self._thread = threading.Thread(target=self._run, name="prefault", daemon=True)
    self._thread.start()

  def _chunk(self, size: int) -> mmap.mmap:
    region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if huge_pages.malloc_asks_for_huge_pages() and hasattr(mmap, "MADV_HUGEPAGE"):
      region.madvise(mmap.MADV_HUGEPAGE)
    pages = np.frombuffer(region, np.uint8)
    pages[::_PAGE] = 1  # One strided write: numpy's loop, without Python's lock.
    del pages  # No exported buffer left: the region can be closed.
    return region

  def _run(self) -> None:
    start = time.perf_counter()
    try:
      while self.touched < self.nbytes and not self._stop.is_set():
        size = min(_CHUNK, self.nbytes - self.touched)
        if resident_bytes() + size > self.budget:
          break
        self._chunks.append(self._chunk(size))
        self.touched += size
      self.seconds = time.perf_counter() - start
    except (OSError, ValueError, MemoryError):  # Could not map more: keep what was touched.
      pass
    finally:
      self.touch_ended.set()
    while not self._stop.wait(self.poll_s):
      while self._chunks and resident_bytes() > self.budget:
        self._chunks.pop().close()

  def release(self) -> float | None:
    """Unmaps the touched memory; the touch's seconds, None if it failed. Idempotent."""
    self._stop.set()
    self._thread.join()
    while self._chunks:
      self._chunks.pop().close()
    return self.seconds


def _wait_for(out) -> None:
  """Waits until `out`'s arrays are ready, those no program dispatched since has taken (donated):
  that program comes after them."""
  for leaf in jax.tree.leaves(out):
    if isinstance(leaf, jax.Array):
      try:
        leaf.block_until_ready()
      except jax.errors.JaxRuntimeError:
        if not leaf.is_deleted():
          raise


class FirstCall:
  """A compiled step with work around its first call: `prefault` (a `Prefault`) released just
  before it, so that the call's temporaries reuse the pages; `after(peak_rss)` run on a thread
  of its own once the call's outputs are ready, with the process's peak RSS then, off the way
  to the first step's result (`after_done`: its future). The second call waits until those
  outputs were seen ready (it may donate them); another program may have taken (donated) some
  already, as a segmented step's forward takes its "reserve" program's buffers
  (`steps.SegmentedStep`): those count as ready (`_wait_for`). `laps`, when given, receives
  the MB the prefault touched and its seconds ("prefault_mb", "prefault_s") at the release.
  Otherwise the compiled step itself (attributes too)."""

  def __init__(self, compiled, prefault: Prefault | None = None, after=None,
               laps: dict | None = None):
    self.compiled = compiled
    self.prefault = prefault
    self.after = after
    self.laps = {} if laps is None else laps
    self.after_done = None
    self._seen_ready = None  # Set once the first call's outputs were seen ready.

  def release(self) -> None:
    """Hands the prefault's memory back now (before the first call; idempotent): also for a
    step that will not be called."""
    if self.prefault is not None:
      seconds = self.prefault.release()
      self.laps.update(prefault_mb=round(self.prefault.touched / 2**20),
                       prefault_s=None if seconds is None else round(seconds, 3))
      self.prefault = None

  def __call__(self, *args, **kwargs):
    self.release()
    if self._seen_ready is not None:
      self._seen_ready.wait()
      self._seen_ready = None
    out = self.compiled(*args, **kwargs)
    if self.after is not None:
      after, seen = self.after, threading.Event()

      def run_after():
        try:
          _wait_for(out)
          peak = peak_resident_bytes()
        finally:
          seen.set()
        after(peak)

      self._seen_ready, self.after = seen, None
      self.after_done = on_thread("after_first", run_after)
    return out

  def __getattr__(self, name):
    return getattr(self.compiled, name)
