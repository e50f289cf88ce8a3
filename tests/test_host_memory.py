"""The compiler's freed heap goes back to the OS after each compilation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpose import host_memory


@pytest.mark.skipif(host_memory._malloc_trim() is None, reason="no malloc_trim (not glibc)")
def test_every_compilation_is_followed_by_a_trim():
  host_memory.trim_after_compiles()
  host_memory.trim_after_compiles()  # Idempotent: still one trim per compilation.
  x = np.ones((7, 5), np.float32)
  before = host_memory.stats()["trims"]
  jax.jit(lambda x: jnp.sin(x) * 3.25 + 0.125).lower(x).compile()
  assert host_memory.stats()["trims"] == before + 1


def test_trim_reports_whether_it_could():
  assert host_memory.trim() == (host_memory._malloc_trim() is not None)
