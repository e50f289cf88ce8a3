"""The entry points' set-up (`jaxpose.runtime`): where the persistent compilation cache goes."""

import os

import jax

from jaxpose import runtime


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
