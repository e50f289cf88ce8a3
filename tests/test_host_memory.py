"""The compiler's freed heap goes back to the OS after each compilation; the first step's
temporaries are touched ahead of it."""

import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpose import host_memory
from jaxpose import steps


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


# The first step's temporaries touched ahead of it (host_memory.Prefault, steps.compile_ahead).


def _program(x):
  y = jnp.sin(x) @ x  # Intermediates the size of x: the program has temporaries.
  return jnp.tanh(y) @ y + y


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
  """A persistent compilation cache of this test's own (restored afterwards)."""
  monkeypatch.delenv(host_memory.PREFAULT_VARIABLE, raising=False)
  before = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", str(tmp_path))
  yield tmp_path
  jax.config.update("jax_compilation_cache_dir", before)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prefault is Linux-only")
def test_first_run_records_the_temporaries_and_the_next_process_touches_them(cache_dir):
  x = np.linspace(-1, 1, 192 * 192, dtype=np.float32).reshape(192, 192)
  expected = jax.jit(_program)(x)
  step_fn = jax.jit(_program)
  laps = {}
  first = steps.compile_ahead(step_fn, x, laps=laps, prefault=True).result()
  assert first.prefault is None  # Nothing known yet.
  record = host_memory.TemporariesRecord.beside_cache()
  key = host_memory.program_key(step_fn.trace(x).lower())
  assert record.get(key) is None
  np.testing.assert_allclose(first(x), expected, rtol=1e-6)
  first.after_done.result()  # Recorded once the first call was on its way.
  nbytes, peak = record.get(key)
  assert nbytes == first.memory_analysis().temp_size_in_bytes > 0
  assert peak >= host_memory.resident_bytes() > 0

  # The next process (here: the same program compiled again) touches them before its first
  # call, as long as the RSS stays under the recorded peak.
  record.put(key, nbytes, host_memory.resident_bytes() + (64 << 20))
  second = steps.compile_ahead(step_fn, x, laps=laps, prefault=True).result()
  assert isinstance(second, host_memory.FirstCall) and second.after is None
  assert second.prefault.nbytes == nbytes
  np.testing.assert_allclose(second(x), expected, rtol=1e-6)  # Released, then called.
  assert second.prefault is None
  assert laps["prefault_mb"] == round(nbytes / 2**20) and laps["prefault_s"] is not None
  np.testing.assert_allclose(second(x), expected, rtol=1e-6)
  assert second.as_text() == first.as_text()  # Otherwise the compiled step itself.
  # Without prefault (a later phase's step), nothing is touched or recorded.
  plain = steps.compile_ahead(step_fn, x, prefault=False).result()
  assert not isinstance(plain, host_memory.FirstCall)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prefault is Linux-only")
def test_a_prefault_stays_under_its_budget_and_hands_chunks_back_above_it():
  now = host_memory.resident_bytes()
  capped = host_memory.Prefault(512 << 20, budget=now + (150 << 20), poll_s=0.005)
  assert capped.touch_ended.wait(60)
  assert 0 < capped.touched <= 150 << 20  # Whole chunks of 64 MB under the budget.
  assert capped.release() is not None and not capped._chunks
  assert capped.release() is not None  # Again: nothing left, no error.
  assert not capped._thread.is_alive()
  roomy = host_memory.Prefault(128 << 20, budget=now + (1 << 30), poll_s=0.005)
  assert roomy.touch_ended.wait(60)
  assert roomy.touched == 128 << 20 and len(roomy._chunks) == 2
  roomy.budget = 0  # The process grew past it: the chunks go back, newest first.
  deadline = time.time() + 60
  while roomy._chunks and time.time() < deadline:
    time.sleep(0.01)
  assert not roomy._chunks
  roomy.release()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prefault is Linux-only")
def test_a_step_that_never_runs_releases_its_prefault_and_a_process_never_waits_for_it():
  touch = host_memory.Prefault(64 << 20, budget=host_memory.resident_bytes() + (1 << 30))
  assert touch.touch_ended.wait(60) and touch.touched == 64 << 20
  unused = host_memory.FirstCall(jax.jit(_program).lower(np.ones((4, 4), np.float32)).compile(),
                                 prefault=touch)
  unused.release()  # E.g. train.py's "already trained": the step is never called.
  assert unused.prefault is None and not touch._chunks and not touch._thread.is_alive()
  # A prefault never released does not keep its process from exiting (a daemon thread).
  code = ("from jaxpose import host_memory; "
          "p = host_memory.Prefault(8 << 20, budget=1 << 40); p.touch_ended.wait(60)")
  done = subprocess.run([sys.executable, "-c", code], timeout=120, check=False,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert done.returncode == 0
def test_no_prefault_without_a_cache_directory_or_when_turned_off(cache_dir, monkeypatch):
  assert host_memory.TemporariesRecord.beside_cache() is not None or not sys.platform.startswith(
      "linux")
  monkeypatch.setenv(host_memory.PREFAULT_VARIABLE, "0")
  assert host_memory.TemporariesRecord.beside_cache() is None
  monkeypatch.delenv(host_memory.PREFAULT_VARIABLE)
  jax.config.update("jax_compilation_cache_dir", str(cache_dir / "absent"))
  assert host_memory.TemporariesRecord.beside_cache() is None


def test_the_record_survives_a_damaged_file_and_keeps_the_latest_programs(tmp_path):
  path = tmp_path / host_memory.RECORD_FILE
  record = host_memory.TemporariesRecord(str(path))
  assert record.get("a") is None  # No file.
  path.write_text("{not json")
  assert record.get("a") is None  # Damaged: counts as empty,
  record.put("a", 123, 456)  # and is replaced whole.
  assert record.get("a") == (123, 456)
  path.write_text(json.dumps({"a": 5, "b": {"temporaries": -5, "peak_rss": 9},
                              "c": {"temporaries": 7, "peak_rss": 8}}))
  assert (record.get("a"), record.get("b"), record.get("c")) == (None, None, (7, 8))
  for i in range(70):
    record.put(f"k{i}", i + 1, 100)
  record.put("k5", 999, 100)  # Put again: the newest.
  kept = json.loads(path.read_text())
  assert len(kept) == 64 and "k0" not in kept and list(kept)[-1] == "k5"
  assert record.get("k5") == (999, 100) and record.get("k69") == (70, 100)
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".step_temporaries")]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prefault is Linux-only")
def test_the_record_is_made_even_when_the_next_step_donates_the_first_ones_outputs(cache_dir):
  step_fn = jax.jit(lambda x: _program(x) * 0.5, donate_argnums=0)
  x = np.linspace(-1, 1, 128 * 128, dtype=np.float32).reshape(128, 128)
  first = steps.compile_ahead(step_fn, x, prefault=True).result()
  y = first(jnp.asarray(x))
  z = first(y)  # Donates y: waits until the recording thread saw y ready.
  assert y.is_deleted()
  first.after_done.result()  # No "Array has been deleted".
  key = host_memory.program_key(step_fn.trace(x).lower())
  assert host_memory.TemporariesRecord.beside_cache().get(key) is not None
  np.testing.assert_allclose(z, jax.jit(lambda x: _program(x) * 0.5)(_program(x) * 0.5),
                             rtol=1e-5)


def test_a_first_calls_outputs_another_program_took_count_as_ready():
  """What a first call's after-work waits for (`FirstCall`): outputs another program took
  (donated) before it looked, as a segmented step's forward takes its "reserve" program's
  buffers, count as ready; the rest are waited for."""
  taken = jnp.arange(4.0)
  kept = jax.jit(lambda a: a * 2)(taken)
  jax.jit(lambda a: a + 1, donate_argnums=0)(taken)
  assert taken.is_deleted()
  with pytest.raises(jax.errors.JaxRuntimeError):
    jax.block_until_ready((taken, kept))
  host_memory._wait_for((taken, {"kept": kept}))
  np.testing.assert_array_equal(kept, [0.0, 2.0, 4.0, 6.0])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_the_peak_is_the_memory_maps_own_high_water_mark():
  now, peak = host_memory.resident_bytes(), host_memory.peak_resident_bytes()
  assert 0 < now <= peak
  with open("/proc/self/status") as f:
    hwm_kb = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
  assert host_memory.status_bytes("VmHWM") // 1024 >= hwm_kb  # Read after: only higher.
  assert host_memory.status_bytes("NoSuchField") == 0
