"""Process set-up shared by the entry points: flags, distributed runtime, caches, TF."""

import functools
import os
import sys

from absl import flags
from absl import logging as absl_logging
import jax

_COORDINATOR = None
_NUM_PROCESSES = None
_PROCESS_ID = None


def define_distributed_flags():
  global _COORDINATOR, _NUM_PROCESSES, _PROCESS_ID
  _COORDINATOR = flags.DEFINE_string(
      "coordinator_address", None, "host:port of process 0 for multi-process runs.")
  _NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
  _PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def setup() -> None:
  """Hides accelerators from TensorFlow (input pipeline only), enables the persistent XLA
  compilation cache, and starts the distributed runtime when asked."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  absl_logging.get_absl_handler().addFilter(_QuietLibraries())
  tf.config.set_visible_devices([], "GPU")
  cache = os.environ.get("JAXPOSE_COMPILATION_CACHE",
                         os.path.join(os.path.expanduser("~"), ".cache", "jaxpose", "xla"))
  if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  from jaxpose import parallel  # pylint: disable=g-import-not-at-top
  if _COORDINATOR is not None:
    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  else:
    parallel.initialize_distributed()


class _QuietLibraries:
  """Drops INFO records from orbax (a dozen lines per save), keeps its warnings and errors."""

  def filter(self, record) -> bool:
    return record.levelno >= 30 or "/orbax/" not in record.pathname


def clean_errors(main, program: str):
  """Wraps an absl main: errors about the user's input (a missing file, a bad value, a
  non-finite loss) print one line naming the culprit instead of a traceback. Set
  JAXPOSE_TRACEBACK=1 to see the traceback."""

  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except (FileNotFoundError, ValueError, FloatingPointError) as e:
      if os.environ.get("JAXPOSE_TRACEBACK"):
        raise
      sys.exit(f"{program}: error: {type(e).__name__}: {e}")

  return wrapped
