r"""Does keeping freed memory in the process make the train step faster? One process, paired.

  python benchmarks/keep_freed_memory.py             # the 2-stack hourglass, 4 pairs of blocks
  python benchmarks/keep_freed_memory.py --set model.num_stacks=8 --blocks 2
  python benchmarks/keep_freed_memory.py --config configs/quickstart.py --per_block 20

`jaxpose.huge_pages` starts train.py with glibc's malloc keeping what it frees (no `mmap` per
large block, no automatic trim of the heap's top) beside the huge pages. This machine's speed
drifts by 10-20% within minutes, so two processes timed one after the other cannot show a
5-10% effect. Here one process compiles the trainer's step once (`benchmarks/models.py`'s
jaxpose side) and switches glibc between the two behaviours with `mallopt` between blocks of
steps, alternating which comes first, and prints each block and the medians:

  mmap   glibc's defaults: large blocks mapped and unmapped per allocation (what a process
         without the tunables does; the heap trimmed as glibc decides).
  keep   M_MMAP_MAX=0 and M_TRIM_THRESHOLD=-1 (never): the tunables' effect.

Switching to "mmap" also trims the heap, so its first step starts from memory given back. The
first step after each switch is not timed. With --huge_pages on (the default) the script starts
itself again as train.py does (`jaxpose.huge_pages`: the huge pages, and the two settings above
from the start, which the "mmap" blocks then undo). glibc on Linux only.
"""

import ctypes
import os
import statistics
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)
# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import models  # noqa: E402
# pylint: enable=g-import-not-at-top,wrong-import-position

# glibc's mallopt parameters (malloc.h) and its defaults for them.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536


def keep_freed_memory(libc, keep: bool) -> None:
  """glibc keeps what the process frees (keep) or maps large blocks apart, as by default."""
  if keep:
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, -1)
  else:
    libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
    libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
    libc.malloc_trim(0)


def main(argv=None) -> None:
  args = models.paired_parser(__doc__).parse_args(argv)
  # As train.py starts (--huge_pages on); the blocks then switch what mallopt can.
  config, host = models.paired_setup(args)
  libc = ctypes.CDLL(None)
  if not hasattr(libc, "mallopt"):
    sys.exit("needs glibc (mallopt)")
  _, run = models.jax_train(config, host, {"device_augment": False})
  run()
  try:  # Each block switches first; its untimed first step is the one after the switch.
    blocks = models.paired_blocks({"mmap": run, "keep": run}, args.blocks, args.per_block,
                                  before_block=lambda label: keep_freed_memory(libc,
                                                                               label == "keep"))
  finally:
    keep_freed_memory(libc, False)  # The caller's process as glibc's defaults have it.
  mmap_s, keep_s = (statistics.median(t for block in blocks[label] for t in block)
                    for label in ("mmap", "keep"))
  print(f"{args.config} {' '.join(args.set)} batch {args.batch}: median step {mmap_s:.3f} s "
        f"(mmap), {keep_s:.3f} s (keep): keep / mmap = {keep_s / mmap_s:.3f}")


if __name__ == "__main__":
  main()
