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
"""

import ctypes
import functools
import time

import jax

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
