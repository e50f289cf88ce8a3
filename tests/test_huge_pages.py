"""jaxpose.huge_pages: when an entry point starts itself again with glibc's malloc tunables (huge
pages, freed memory kept), that it does so once, as the same process with the same arguments,
and that a freed block then stays in the process."""

import os
import subprocess
import sys

import pytest

import helpers
from jaxpose import huge_pages


@pytest.fixture(name="glibc_linux")
def _glibc_linux(monkeypatch):
  monkeypatch.setattr(huge_pages, "_glibc_at_least", lambda major, minor: True)
  monkeypatch.setattr(huge_pages.sys, "platform", "linux")


OURS = ("glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:"
        "glibc.malloc.trim_threshold=18446744073709551615")


def test_the_tunables_are_added_once_beside_the_users(glibc_linux):
  env = huge_pages.environment({"PATH": "/bin"}, thp_mode="madvise")
  assert env == {"PATH": "/bin", "GLIBC_TUNABLES": OURS}
  env = huge_pages.environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, thp_mode="always")
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:" + OURS
  assert huge_pages.environment(env, thp_mode="always") is None  # Started again: no loop.


@pytest.mark.parametrize("environ,thp_mode", [
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise"),  # The user's own choices.
    ({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=65536"}, "madvise"),
    ({"JAXPOSE_HUGE_PAGES": "0"}, "madvise"),  # Turned off.
    ({}, "never"), ({}, ""),  # The kernel gives none, or says nothing.
])
def test_nothing_happens_where_it_is_off_or_unavailable(glibc_linux, environ, thp_mode):
  assert huge_pages.environment(environ, thp_mode=thp_mode) is None


def test_nothing_happens_without_glibc_2_35(monkeypatch):
  monkeypatch.setattr(huge_pages, "_glibc_at_least", lambda major, minor: False)
  assert huge_pages.environment({}, thp_mode="always") is None


def test_the_kernels_mode_is_the_bracketed_one(tmp_path):
  path = tmp_path / "enabled"
  path.write_text("always [madvise] never\n")
  assert huge_pages.kernel_thp_mode(str(path)) == "madvise"
  assert huge_pages.kernel_thp_mode(str(tmp_path / "missing")) == ""


def test_a_program_starts_again_once_as_the_same_process(tmp_path):
  environ = {k: v for k, v in os.environ.items()
             if k not in ("GLIBC_TUNABLES", huge_pages.OFF_VARIABLE)}
  if huge_pages.environment(environ) is None:
    pytest.skip("no glibc >= 2.35 with transparent huge pages on this machine")
  script = tmp_path / "program.py"
  script.write_text(
      "import os, sys\n"
      "print('start', os.getpid(), flush=True)\n"
      "from jaxpose import huge_pages\n"
      "huge_pages.reexec()\n"
      "print('run', os.getpid(), os.environ['GLIBC_TUNABLES'], sys.argv[1:])\n")
  environ["PYTHONPATH"] = str(helpers.REPO)
  out = subprocess.run([sys.executable, str(script), "a", "--b=1"], capture_output=True,
                       text=True, env=environ, check=True).stdout.splitlines()
  starts = [line.split()[1] for line in out if line.startswith("start")]
  runs = [line for line in out if line.startswith("run")]
  assert len(starts) == 2 and starts[0] == starts[1], out
  assert runs == [f"run {starts[0]} {OURS} ['a', '--b=1']"], out


def test_freed_memory_stays_in_the_started_process(tmp_path):
  """Under the tunables a freed large block stays resident (the next step reuses its pages);
  without them glibc unmaps it at once."""
  environ = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  if huge_pages.environment(environ) is None:
    pytest.skip("no glibc >= 2.35 with transparent huge pages on this machine")
  code = ("import os\n"
          "page = os.sysconf('SC_PAGE_SIZE')\n"
          "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * page\n"
          "block = bytearray(256 << 20)\n"  # Zero-filled: every page touched.
          "before = rss(); del block\n"
          "print((before - rss()) >> 20)\n")
  freed = [int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=env, check=True).stdout)
           for env in (environ, huge_pages.environment(environ))]
  assert freed[0] >= 200 and freed[1] <= 16, freed  # MB given back: without, with the tunables.


def test_whether_malloc_asks_for_huge_pages_is_read_from_the_tunables():
  on = huge_pages.environment({}, thp_mode="madvise")
  assert huge_pages.malloc_asks_for_huge_pages(on)
  assert not huge_pages.malloc_asks_for_huge_pages({})
  assert not huge_pages.malloc_asks_for_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
