"""Compiled train steps kept on disk and read back before their program is traced.

With the persistent compilation cache warm, a training process still traces and lowers its
step (2.0 s for the 2-stack hourglass, 6 s for the 8-stack, on a 2-core CPU) before XLA can
look the program up and read it back (2.4-2.6 s / 23-30 s): the cache's key is the lowered
program. `StepStore` keeps each first step's executable (`jax.experimental.serialize_executable`)
under a name known before tracing: the caller's label for the program (the config, the phase,
the program's part of the step) and the shapes, dtypes and shardings of the step's arguments
(`name`). A later process starts reading it on a thread (XLA's deserialisation does not hold
Python's lock; a step's programs one after another, `steps.compile_ahead`) while it traces and
lowers the step itself, and uses what it read only if the lowered program is the one stored
(`host_memory.program_key`, its SHA-256): the name only says where to look, the program decides.
A stale entry (the code changed) costs a read beside the trace, then the step compiles as before.
A segmented step (`steps.SegmentedStep`) with programs kept is traced beside its first call
instead, each program run once it is read and found to be the one traced (`steps._TracedBeside`).

An entry is written only from a program XLA compiled in this process, and only if it took at
least the persistent cache's threshold to compile: an executable read from the persistent cache
and serialised again lost its functions here ("Function ... not found" at its first call; jax
0.10.2, CPU). The `KEEP` entries last written or read are kept (the 2-stack hourglass's step
is 10 MB, the 8-stack's 34 MB). Only for one process on one CPU device, where it was
measured; `$JAXPOSE_STEP_STORE=0` turns it off. As with the persistent cache itself, reading an
entry runs what it holds (pickle, XLA's executable): keep the cache directory your own.
"""

import contextlib
import functools
import hashlib
import io
import os
import pickle
import threading
import time

from absl import logging
import jax
from jax.experimental import serialize_executable

from jaxpose import host_memory

STORE_VARIABLE = "JAXPOSE_STEP_STORE"
DIRECTORY = "jaxpose_steps"  # Inside the persistent compilation cache's directory.
KEEP = 16  # Two programs per train step (`steps.TrainStep`), a segmented one's 12 (the
# hourglass's; under train.py's 1 s `min_compile_s` its 3 "reserve" programs are not kept).
_FORMAT = 1
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"

_hits = threading.local()


def _count_cache_hit(event: str, **kwargs) -> None:
  del kwargs
  if event == CACHE_HIT_EVENT:
    _hits.count = getattr(_hits, "count", 0) + 1


@functools.cache
def _count_cache_hits() -> None:
  """Counts the persistent cache's hits per thread from now on, in this process (idempotent)."""
  jax.monitoring.register_event_listener(_count_cache_hit)


def compile_fresh(lowered: jax.stages.Lowered) -> tuple[jax.stages.Compiled, bool]:
  """(`lowered.compile()`, whether XLA compiled it here rather than reading the persistent
  cache): the latter may be stored."""
  _count_cache_hits()
  before = getattr(_hits, "count", 0)
  compiled = lowered.compile()
  return compiled, getattr(_hits, "count", 0) == before


def name(label: str, args) -> str:
  """The name a program is stored under, from what is known before tracing it: `label`, the
  arguments' paths, shapes, dtypes and shardings (arrays or `jax.ShapeDtypeStruct`s), JAX's
  version and flags, XLA's flags and the devices."""
  return names([label], args)[0]


def names(labels: list[str], args) -> list[str]:
  """`name(label, args)` for each of `labels`, the arguments described once (the 8-stack
  hourglass's train step's: 40 ms)."""
  parts = [f"format {_FORMAT}", jax.__version__, os.environ.get("XLA_FLAGS", ""),
           str([(d.platform, d.device_kind, d.id) for d in jax.devices()]),
           str(jax.devices()[0].client.platform_version)]
  parts += [f"{k}={v!r}" for k, v in sorted(jax.config.values.items())
            if isinstance(v, (str, int, float, bool, type(None)))]
  for path, leaf in jax.tree_util.tree_flatten_with_path(args)[0]:
    sharding = getattr(leaf, "sharding", None)
    spec = getattr(sharding, "spec", sharding)
    parts.append(f"{jax.tree_util.keystr(path)} {getattr(leaf, 'shape', None)} "
                 f"{getattr(leaf, 'dtype', type(leaf).__name__)} {spec}")
  described = "\n".join(parts)
  return [hashlib.sha256(f"{label}\n{described}".encode()).hexdigest() for label in labels]


class StepStore:
  """Executables by `name`, one file each in `directory`, each with the SHA-256 of the lowered
  program it was compiled from. Files are written whole (`os.replace`); one that cannot be read
  counts as absent."""

  def __init__(self, directory: str, keep: int = KEEP):
    self.directory, self.keep = directory, keep

  @classmethod
  def beside_cache(cls) -> "StepStore | None":
    """The store in the persistent compilation cache's directory, or None where it does not
    apply: $JAXPOSE_STEP_STORE is "0", no local cache directory, not the CPU, or more than one
    device (an executable is read back onto every device the backend has) or process (each
    would write the same files)."""
    if os.environ.get(STORE_VARIABLE, "1") == "0" or jax.device_count() > 1:
      return None
    cache_dir = host_memory.cpu_cache_directory()
    return None if cache_dir is None else cls(os.path.join(cache_dir, DIRECTORY))

  @staticmethod
  def min_compile_s() -> float:
    """Steps that compiled faster are not kept: the persistent cache's own threshold."""
    return jax.config.jax_persistent_cache_min_compile_time_secs

  def _path(self, key: str) -> str:
    return os.path.join(self.directory, key + ".step")

  def read(self, key: str, submit=None) -> "Reading | None":
    """Starts reading the executable stored as `key`: its program's key at once, XLA's
    deserialisation on a thread of its own or by `submit` (e.g. a one-thread pool's, reading
    several in turn). None if there is no such entry, or it cannot be read."""
    path = self._path(key)
    try:
      with open(path, "rb") as f:
        entry = pickle.load(f)
    except FileNotFoundError:
      return None
    except Exception as e:  # pylint: disable=broad-except  # A damaged file: as absent.
      logging.info("The stored step %s could not be read (%s: %s).", path, type(e).__name__, e)
      return None
    if (not isinstance(entry, dict) or entry.get("format") != _FORMAT
        or not isinstance(entry.get("program"), str)
        or not isinstance(entry.get("payload"), bytes)):
      return None
    return Reading(entry["program"], entry["payload"], path, submit)

  def put(self, key: str, program: str, compiled: jax.stages.Compiled) -> bool:
    """Stores `compiled` (compiled here from the program whose key is `program`) as `key`, then
    keeps the `keep` files last written or read. False if it cannot be serialised or written."""
    try:
      payload, _, _ = serialize_executable.serialize(compiled)
    except Exception as e:  # pylint: disable=broad-except
      # JAX declines some executables: constants passed as arguments, closed-over mutable
      # arrays (none of the five families' steps, checked at their quickstarts' sizes). Such a
      # step is compiled, or read from the persistent cache, at every start, as before.
      logging.info("The step is not kept: JAX cannot serialise it (%s: %s).",
                   type(e).__name__, e)
      return False
    entry = {"format": _FORMAT, "program": program, "payload": payload}
    try:
      os.makedirs(self.directory, exist_ok=True)
      host_memory.replace_file(self._path(key), pickle.dumps(entry, pickle.HIGHEST_PROTOCOL),
                               prefix=".step")
    except OSError as e:
      logging.info("The step is not stored in %s (%s).", self.directory, e)
      return False
    self._prune()
    return True

  def _prune(self) -> None:
    with contextlib.suppress(OSError):
      entries = [e for e in os.scandir(self.directory) if e.name.endswith(".step")]
      entries.sort(key=lambda e: e.stat().st_mtime, reverse=True)
      for entry in entries[self.keep:]:
        with contextlib.suppress(OSError):
          os.unlink(entry.path)


class Reading:
  """A stored step being read: `program`, the key of the lowered program it was compiled from,
  at once; `compiled(lowered)`, the executable, deserialised meanwhile on a thread of its own
  or by `submit` (None if that failed)."""

  def __init__(self, program: str, payload: bytes, path: str, submit=None):
    self.program, self.path = program, path
    self.seconds = None  # The deserialisation's, once done.
    submit = submit or functools.partial(host_memory.on_thread, "step_store")
    self._future = submit(self._deserialise, payload)

  def _deserialise(self, payload: bytes):
    start = time.perf_counter()
    try:
      # What serialize_executable.deserialize_and_load does first: XLA's deserialisation
      # (the costly part), which needs no tree.
      backend = jax.devices()[0].client
      unpickler = serialize_executable._JaxPjrtUnpickler(  # pylint: disable=protected-access
          io.BytesIO(payload), backend)
      loaded = unpickler.load()
    except Exception as e:  # pylint: disable=broad-except
      logging.info("The stored step %s could not be read (%s: %s).", self.path,
                   type(e).__name__, e)
      return None
    self.seconds = time.perf_counter() - start
    return loaded

  def compiled(self, lowered: jax.stages.Lowered) -> jax.stages.Compiled | None:
    """Waits for the read, then returns the executable as `lowered.compile()` would (the rest of
    `deserialize_and_load`, with the traced program's trees); None if it could not be read."""
    loaded = self._future.result()
    if loaded is None:
      return None
    unloaded, args_info_flat, no_kwargs = loaded
    args_info = lowered.in_tree.unflatten(args_info_flat)
    compiled = jax.stages.Compiled(unloaded.load(), [], args_info, lowered.out_tree,
                                   no_kwargs=no_kwargs)
    with contextlib.suppress(OSError):  # Used: the newest to the pruning (`StepStore.keep`).
      os.utime(self.path)
    return compiled
