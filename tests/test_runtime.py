"""The entry points' set-up and ending (`jaxpose.runtime`): where the persistent compilation
cache goes; the process ends with everything written, without Python's teardown."""

import os
import subprocess
import sys
import textwrap

import jax
import pytest

from jaxpose import runtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_compilation_cache_follows_jaxpose_then_jax_variables():
  home = os.path.join(os.path.expanduser("~"), ".cache", "jaxpose", "xla")
  assert runtime.compilation_cache_settings({}) == (home, 1.0)
  assert runtime.compilation_cache_settings({"JAX_COMPILATION_CACHE_DIR": "/j"}) == ("/j", 1.0)
  both = {"JAX_COMPILATION_CACHE_DIR": "/j", "JAXPOSE_COMPILATION_CACHE": "/p",
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.25"}
  assert runtime.compilation_cache_settings(both) == ("/p", 0.25)
  assert runtime.compilation_cache_settings({**both, "JAXPOSE_COMPILATION_CACHE": ""})[0] == ""


def test_the_suite_compiles_into_its_own_cache_and_so_do_the_programs_it_starts():
  """conftest.py's environment reached JAX in this process (it was set before JAX's import),
  and `runtime.setup` in a script or CLI a test starts reads the same: the user's cache is
  left alone."""
  suite = os.path.realpath(os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "xla"))
  assert os.path.realpath(jax.config.jax_compilation_cache_dir) == suite
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.2
  cache, threshold = runtime.compilation_cache_settings(os.environ)
  assert (os.path.realpath(cache), threshold) == (suite, 0.2)


_ENDS = textwrap.dedent("""
    import atexit, concurrent.futures, sys, threading, time
    from jaxpose import runtime

    def main():
      out, code = sys.argv[1], sys.argv[2]
      def later():  # A thread that is not a daemon: Python waits for it.
        time.sleep(0.3)
        with open(out + ".thread", "w") as f:
          f.write("thread")
      threading.Thread(target=later).start()
      pool = concurrent.futures.ThreadPoolExecutor(1)  # Left open, its worker idle.
      pool.submit(int).result()
      globals()["pool"] = pool
      atexit.register(lambda: open(out + ".atexit", "w").write("atexit"))
      unclosed = open(out + ".unclosed", "w")  # Neither closed nor flushed.
      unclosed.write("x" * 100)
      globals()["unclosed"] = unclosed
      print("no newline", end="")  # Left in stdout's buffer (a pipe).
      if code != "none":
        sys.exit(int(code) if code.isdigit() else code)

    runtime.exit_without_teardown(main)
    print("not reached")
""")


@pytest.mark.parametrize("code,status", [("none", 0), ("3", 3), ("a message", 1)])
def test_an_entry_point_ends_with_its_status_and_everything_written(tmp_path, code, status):
  """`runtime.exit_without_teardown` skips Python's teardown of the modules, not what that
  teardown would have finished: the other threads (an idle pool's told to end, as Python
  does), the exit handlers, unflushed files."""
  script = tmp_path / "ends.py"
  script.write_text(_ENDS)
  out = tmp_path / "out"
  proc = subprocess.run([sys.executable, str(script), str(out), code], capture_output=True,
                        text=True, timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})
  assert proc.returncode == status, proc.stderr[-2000:]
  assert proc.stdout == "no newline"
  assert (proc.stderr.strip().splitlines() or [""])[-1] == ("a message" if status == 1 else "")
  assert (out.parent / "out.thread").read_text() == "thread"
  assert (out.parent / "out.atexit").read_text() == "atexit"
  assert (out.parent / "out.unclosed").read_text() == "x" * 100
