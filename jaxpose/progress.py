"""Progress bars with an ETA for long one-off work (pre-crop, evaluation over a split, predict
on a folder): on process 0's stderr only, and off with JAXPOSE_PROGRESS=0 (logs, CI)."""

import os
import sys

import jax
import tqdm


def bar(total: int, desc: str, unit: str = "image", *, min_total: int = 2) -> tqdm.tqdm:
  """A tqdm bar for `total` units of work, updated with `.update(n)`; disabled (a no-op with
  the same methods) on processes other than 0, for fewer than `min_total` units, or when
  JAXPOSE_PROGRESS=0."""
  off = (os.environ.get("JAXPOSE_PROGRESS", "1") == "0" or total < min_total
         or jax.process_index() != 0)
  # On a terminal the finished bar is erased; into a pipe or a file it is left, ended by a
  # newline (erasing there leaves no newline, and the next line ran on after the bar).
  return tqdm.tqdm(total=total, desc=desc, unit=unit, disable=off, file=sys.stderr,
                   dynamic_ncols=True, leave=not sys.stderr.isatty(), mininterval=0.5)


def write(message: str) -> None:
  """A line printed above an active bar (not through it)."""
  tqdm.tqdm.write(message, file=sys.stderr)
