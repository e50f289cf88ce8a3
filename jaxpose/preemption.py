"""Preemption notices (SIGTERM) that every process acts on at the same point.

On one process a SIGTERM handler sets a flag. With several processes a flag per process is not
enough: the process that got the signal would enter the collective save while the others enter
the next step's collectives, and all of them hang. JAX's distributed runtime has a preemption
service for this: a notice to any process is propagated to all, and they agree on the first
sync point id past every process's current one (`multihost_utils.reached_preemption_sync_point`).

`Preemption.reached()` is called at every sync point that all processes pass in the same order
(after each training step and between evaluation batches); it returns True on every process at
the same call. Call ids are a per-run counter, so they increase identically everywhere.
"""

import signal

from absl import logging
import jax
from jax.experimental import multihost_utils


class Preemption:
  """`install()` once, then `reached()` at every sync point (see module docstring)."""

  def __init__(self):
    self._requested = False
    self._calls = 0
    self._stop = False
    self._distributed = False

  def install(self) -> None:
    self._distributed = jax.process_count() > 1 and _has_service()
    if self._distributed:
      return  # The distributed runtime's preemption notifier listens to SIGTERM itself.
    try:
      signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread (e.g. inside a test runner's worker).
      pass

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint at the next step boundary.")
    self._requested = True

  def reached(self, step: int | None = None) -> bool:
    """True (from then on) once every process has agreed to stop; `step` is for logs only."""
    del step
    if self._stop:
      return True
    self._calls += 1
    if self._distributed:
      self._stop = multihost_utils.reached_preemption_sync_point(self._calls)
    else:
      self._stop = self._requested
    return self._stop


def _has_service() -> bool:
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  return distributed.global_state.preemption_sync_manager is not None
