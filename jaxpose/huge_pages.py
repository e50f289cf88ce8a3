"""glibc's malloc set up for the step's buffers (transparent huge pages, freed memory kept in the
process): `train.py` and `eval.py` re-execute themselves once with its tunables.

XLA's CPU runtime maps each execution's temporaries afresh (the 2-stack hourglass's train step
at batch 8: one 2.4 GB `mmap` a step, through glibc's malloc, ~600,000 page faults in 4 KB
pages) and streams through them: its memory-bound work (BatchNorm, ReLU, the residual sums) is
~45% of the step. With the glibc tunable `glibc.malloc.hugetlb=1` malloc marks its large
mappings `MADV_HUGEPAGE`, so where the kernel's THP mode is "madvise" (or "always") they come
in 2 MB pages. Measured on a 2-core Xeon VM (one process each, medians of the steps after the
first): the 2-stack's train step 3.74-3.91 -> 3.44-3.48 s, the quickstart's 0.085 -> 0.073 s,
IEF's quickstart's 0.0745 -> 0.0674 s. The faults are not what it saves: keeping the memory
mapped between steps (glibc's arena_max=1, mmap_max=0) took the faults to zero and left the
step at 3.9 s; the huge pages' gain is, in our reading, the TLB's. The cost is the first
step, whose 2 MB pages come slower (the 2-stack's first step 4.5 -> 8 s, the 8-stack's start
11-19 s later, the quickstart's +0.1-0.4 s), repaid after ~12, ~16-27 and ~30 steps. On that
VM the slow first pages are, in our reading, its balloon's free page reporting: the host takes
back free blocks of 2 MB and more and backs them again on their next touch
(`python benchmarks/fresh_memory.py`).

With the huge pages, freed memory is also kept in the process (`glibc.malloc.mmap_max=0`: large
blocks come from the heap, not from an `mmap` each; `glibc.malloc.trim_threshold` at its
maximum: the heap's free top is not handed back by itself), so each step finds the 2 MB pages
the last one touched instead of faulting fresh ones in. `host_memory`'s trims after each
compilation still return the compiler's freed heap. Measured in one process, switching between
the two by `mallopt` in alternating blocks of 3 steps (`python benchmarks/keep_freed_memory.py`,
2026-12-03, huge pages on in both): the 2-stack's step 0.92x the time (faster in each of 3
pairs of blocks), the 8-stack's 0.96x (faster in 1 pair of 2); peak RSS within 2% (separate
processes, one run each).

glibc reads its tunables only when a process starts, so `reexec()` starts the program again
(same PID, arguments and environment, plus the tunables) before it has imported anything large.
`JAXPOSE_HUGE_PAGES=0` turns it off; a `GLIBC_TUNABLES` that already names any of them is left
as it is (the user tunes malloc). Nothing happens off Linux, below glibc 2.35 or where the
kernel's THP mode is "never".
"""

import os
import platform
import sys

# Added to GLIBC_TUNABLES (the docstring says why): 2 MB pages for malloc's large blocks, and
# freed memory kept in the process (no mmap per large block; the heap never trimmed by itself).
TUNABLES = (("glibc.malloc.hugetlb", "1"), ("glibc.malloc.mmap_max", "0"),
            ("glibc.malloc.trim_threshold", str(2**64 - 1)))
SETTING = ":".join(f"{name}={value}" for name, value in TUNABLES)  # As GLIBC_TUNABLES spells it.
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
OFF_VARIABLE = "JAXPOSE_HUGE_PAGES"


def _glibc_at_least(major: int, minor: int) -> bool:
  name, version = platform.libc_ver()
  if name != "glibc":
    return False
  try:
    return tuple(int(x) for x in version.split(".")[:2]) >= (major, minor)
  except ValueError:
    return False


def kernel_thp_mode(path: str = THP_MODE_FILE) -> str:
  """The kernel's THP mode ("always", "madvise" or "never"), "" where unknown."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return ""
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else ""


def environment(environ=None, thp_mode: str | None = None) -> dict | None:
  """The environment to start the program with, or None when it should run as it is."""
  environ = dict(os.environ if environ is None else environ)
  tunables = environ.get("GLIBC_TUNABLES", "")
  if environ.get(OFF_VARIABLE, "1") == "0" or any(name in tunables for name, _ in TUNABLES):
    return None
  if not sys.platform.startswith("linux") or not _glibc_at_least(2, 35):
    return None
  if (thp_mode if thp_mode is not None else kernel_thp_mode()) not in ("always", "madvise"):
    return None
  environ["GLIBC_TUNABLES"] = ":".join(t for t in (tunables, SETTING) if t)
  return environ


def malloc_asks_for_huge_pages(environ=None) -> bool:
  """Whether this process's malloc asks for 2 MB pages (GLIBC_TUNABLES has the tunable on)."""
  tunables = (os.environ if environ is None else environ).get("GLIBC_TUNABLES", "")
  return f"{TUNABLES[0][0]}={TUNABLES[0][1]}" in tunables.split(":")


def reexec() -> None:
  """Starts this program again with the tunables (see the module's docstring), or
  returns when that is off, unavailable or already done."""
  environ = environment()
  if environ is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, environ)
