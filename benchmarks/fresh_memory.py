r"""What the first touch of freshly mapped memory costs, in 2 MB and in 4 KB pages.

  python benchmarks/fresh_memory.py               # 2.4 GB, the 2-stack train step's temporaries
  python benchmarks/fresh_memory.py --gb 1 --pauses 0,0,2

Each pass maps --gb of anonymous memory (advised MADV_HUGEPAGE for the 2 MB rows), writes one
byte per 4 KB page and unmaps it, after the pause given for it: the pattern of XLA's CPU runtime,
which maps every execution's temporaries afresh. A pass that reuses memory the process freed
just before is fast; what a first pass costs beyond that is the kernel's (zeroing, finding 2 MB
blocks) and, on a virtual machine whose balloon reports free memory to its host, the host's:
free blocks of the reporting order and above are handed back ~2 s after they are freed, and
backed again on their next touch. The order in effect
(/sys/module/page_reporting/parameters/page_reporting_order: 9 is 2 MB) and the balloon's
feature bit 5 (VIRTIO_BALLOON_F_REPORTING) say whether that applies; both are printed. Linux
only (MADV_HUGEPAGE; Python 3.8+).
"""

import argparse
import glob
import mmap
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable-next=g-import-not-at-top,wrong-import-position
from jaxpose import huge_pages  # noqa: E402  (imports no JAX)

PAGE = 4096


def touch_pass(nbytes: int, huge: bool) -> float:
  """Seconds to map `nbytes`, write a byte in each 4 KB page and unmap it."""
  start = time.perf_counter()
  region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
  if huge:
    region.madvise(mmap.MADV_HUGEPAGE)
  pages = np.frombuffer(region, np.uint8)
  pages[::PAGE] = 1  # One strided write: the loop is numpy's, not the interpreter's.
  del pages
  region.close()
  return time.perf_counter() - start


def host_facts() -> dict:
  """THP mode, the page-reporting order in effect and whether a virtio balloon reports."""
  def read(path):
    try:
      with open(path) as f:
        return f.read().strip()
    except OSError:
      return None

  order = read("/sys/module/page_reporting/parameters/page_reporting_order")
  reporting = None
  for device in glob.glob("/sys/bus/virtio/devices/*"):
    if read(os.path.join(device, "device")) == "0x0005":  # A balloon.
      features = read(os.path.join(device, "features")) or ""
      reporting = len(features) > 5 and features[5] == "1"
  return {"thp": huge_pages.kernel_thp_mode() or None,
          "page_reporting_order": order, "balloon_free_page_reporting": reporting}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--gb", type=float, default=2.4, help="Gigabytes a pass maps.")
  parser.add_argument("--pauses", default="0,0,0.3,1,3,6,0",
                      help="Seconds idle before each pass (comma-separated).")
  args = parser.parse_args(argv)
  nbytes = int(args.gb * 2**30) // PAGE * PAGE
  pauses = [float(p) for p in args.pauses.split(",") if p]
  print(host_facts())
  for huge in (True, False):
    for i, pause in enumerate(pauses):
      time.sleep(pause)
      seconds = touch_pass(nbytes, huge)
      print(f"{'2 MB' if huge else '4 KB'} pages, pass {i} after {pause:g} s idle: "
            f"{seconds:.3f} s ({args.gb * 2**30 / seconds / 1e9:.1f} GB/s)", flush=True)


if __name__ == "__main__":
  main()
