"""A process's first step is kept after its first call and read back by the next process
before its program is traced, used only if the traced program is the one kept."""

import os
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpose import host_memory
from jaxpose import step_store
from jaxpose import steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _program(x, y):
  return jnp.tanh(jnp.sin(x) @ y) @ x + y.sum(), {"norm": jnp.linalg.norm(x)}


def _other(x, y):
  return jnp.cos(x) @ y + 1.0, {"norm": jnp.abs(x).sum()}


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
  """A persistent compilation cache directory of this test's own (restored afterwards)."""
  monkeypatch.delenv(step_store.STORE_VARIABLE, raising=False)
  monkeypatch.setenv(host_memory.PREFAULT_VARIABLE, "0")  # Tested in test_host_memory.py.
  before = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", str(tmp_path))
  # These programs compile in milliseconds: kept all the same (StepStore.min_compile_s).
  monkeypatch.setattr(step_store.StepStore, "min_compile_s", staticmethod(lambda: 0.0))
  yield tmp_path
  jax.config.update("jax_compilation_cache_dir", before)
  # A stale read (another program under the name) goes on after its test; let it end here, not
  # in another test's count of compilations and trims.
  for thread in threading.enumerate():
    if thread.name.startswith(("step_store", "compile_ahead", "after_first")):
      thread.join(60)


def _args():
  x = np.linspace(-1, 1, 48 * 48, dtype=np.float32).reshape(48, 48)
  return x, x.T * 0.5


def _stored(cache_dir) -> list[str]:
  directory = cache_dir / step_store.DIRECTORY
  return sorted(os.listdir(directory)) if directory.exists() else []


def _keep(fn=_program, prefault: bool = False):
  """A first process's step of `fn`, compiled, called once and kept (its after-work done)."""
  x, y = _args()
  first = steps.compile_ahead(jax.jit(fn), x, y, keep="a program", prefault=prefault).result()
  first(x, y)
  first.after_done.result()


def test_a_kept_step_is_read_back_before_tracing_and_computes_the_same(cache_dir):
  x, y = _args()
  expected = jax.jit(_program)(x, y)
  first = steps.compile_ahead(jax.jit(_program), x, y, keep="a program").result()
  assert _stored(cache_dir) == []  # Kept once its first call is on its way,
  out = first(x, y)
  first.after_done.result()
  assert len(_stored(cache_dir)) == 1  # under the name known before tracing.
  jax.tree.map(np.testing.assert_array_equal, out, expected)

  path = cache_dir / step_store.DIRECTORY / _stored(cache_dir)[0]
  os.utime(path, (0, 0))
  laps = {}  # The next process: a new jit of the same function.
  second = steps.compile_ahead(jax.jit(_program), x, y, laps=laps, keep="a program").result()
  assert "stored_read" in laps and laps["stored_read"] >= 0
  assert path.stat().st_mtime > 0  # Used: the newest to the pruning.
  assert not isinstance(second, host_memory.FirstCall)  # Read, so not kept again.
  for _ in range(2):
    jax.tree.map(np.testing.assert_array_equal, second(x, y), expected)


def test_another_program_under_the_same_name_is_compiled_and_replaces_it(cache_dir):
  x, y = _args()
  _keep()
  laps = {}  # The code changed, the label did not.
  changed = steps.compile_ahead(jax.jit(_other), x, y, laps=laps, keep="a program").result()
  assert "stored_read" not in laps
  jax.tree.map(np.testing.assert_array_equal, changed(x, y), jax.jit(_other)(x, y))
  changed.after_done.result()
  laps = {}
  again = steps.compile_ahead(jax.jit(_other), x, y, laps=laps, keep="a program").result()
  assert "stored_read" in laps
  jax.tree.map(np.testing.assert_array_equal, again(x, y), jax.jit(_other)(x, y))


def test_a_kept_step_that_cannot_be_used_is_compiled(cache_dir, monkeypatch):
  x, y = _args()
  _keep()

  def broken(self, lowered):
    raise TypeError("another JAX's Compiled")

  monkeypatch.setattr(step_store.Reading, "compiled", broken)
  laps = {}
  step = steps.compile_ahead(jax.jit(_program), x, y, laps=laps, keep="a program").result()
  assert "stored_read" not in laps
  jax.tree.map(np.testing.assert_array_equal, step(x, y), jax.jit(_program)(x, y))


def test_the_name_is_the_label_and_the_arguments_and_is_the_same_in_another_process():
  x, y = _args()
  name = step_store.name("a program", (x, y))
  assert name == step_store.name("a program", (x.copy(), y))
  assert name != step_store.name("another", (x, y))
  assert name != step_store.name("a program", (x, y[:, :47]))
  assert name != step_store.name("a program", (x, y.astype(np.float16)))
  assert name != step_store.name("a program", {"x": x, "y": y})
  code = ("import numpy as np; import tests.conftest; from jaxpose import step_store; "
          "x = np.linspace(-1, 1, 48 * 48, dtype=np.float32).reshape(48, 48); "
          "print(step_store.name('a program', (x, x.T * 0.5)))")
  done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        timeout=120, check=True)
  assert done.stdout.strip() == name


def test_a_damaged_entry_counts_as_absent_and_is_replaced(cache_dir):
  x, y = _args()
  store = step_store.StepStore.beside_cache()
  os.makedirs(store.directory)
  name = step_store.name("a program", (x, y))
  with open(store._path(name), "wb") as f:
    f.write(b"not a pickle")
  assert store.read(name) is None
  laps = {}
  step = steps.compile_ahead(jax.jit(_program), x, y, laps=laps, keep="a program").result()
  assert "stored_read" not in laps
  step(x, y)
  step.after_done.result()
  assert store.read(name) is not None


def test_a_step_read_from_the_persistent_cache_is_not_kept(cache_dir):
  # Serialised again, such an executable lost its functions here (step_store's docstring).
  before = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  x, y = _args()
  salt = float(int.from_bytes(os.urandom(3), "little"))  # A program no earlier run cached.
  fn = lambda x, y: (jnp.sinh(x) @ y + salt, {"n": x.sum()})
  try:
    _, fresh = step_store.compile_fresh(jax.jit(fn).lower(x, y))
    jax.clear_caches()  # As a new process: only the persistent cache has it.
    _, again = step_store.compile_fresh(jax.jit(fn).lower(x, y))
  finally:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before)
  assert fresh and not again


def test_a_step_that_compiles_faster_than_the_cache_keeps_is_not_kept(cache_dir, monkeypatch):
  x, y = _args()
  monkeypatch.setattr(step_store.StepStore, "min_compile_s", staticmethod(lambda: 1e9))
  step = steps.compile_ahead(jax.jit(_program), x, y, keep="a program").result()
  assert not isinstance(step, host_memory.FirstCall)
  step(x, y)
  assert _stored(cache_dir) == []


def test_a_step_jax_cannot_serialise_is_not_kept_and_trains_as_before(cache_dir, monkeypatch):
  def declined(compiled):
    raise ValueError("Compilation does not support serialization")

  monkeypatch.setattr(step_store.serialize_executable, "serialize", declined)
  x, y = _args()
  step = steps.compile_ahead(jax.jit(_program), x, y, keep="a program").result()
  jax.tree.map(np.testing.assert_array_equal, step(x, y), jax.jit(_program)(x, y))
  step.after_done.result()  # Not kept,
  assert _stored(cache_dir) == []
  laps = {}
  again = steps.compile_ahead(jax.jit(_program), x, y, laps=laps, keep="a program").result()
  assert "stored_read" not in laps  # so compiled again.
  jax.tree.map(np.testing.assert_array_equal, again(x, y), jax.jit(_program)(x, y))


def test_the_store_keeps_the_newest_entries_and_applies_only_where_asked(cache_dir, monkeypatch):
  x, y = _args()
  store = step_store.StepStore(str(cache_dir / "kept"), keep=2)
  compiled = jax.jit(_program).lower(x, y).compile()
  for i in range(4):
    assert store.put(f"n{i}", "p", compiled)
    os.utime(store._path(f"n{i}"), (i, i))  # Distinct times, oldest first.
  assert sorted(os.listdir(store.directory)) == ["n2.step", "n3.step"]
  assert store.read("n3").program == "p" and store.read("n0") is None
  assert step_store.StepStore.beside_cache() is not None
  monkeypatch.setenv(step_store.STORE_VARIABLE, "0")
  assert step_store.StepStore.beside_cache() is None
  monkeypatch.delenv(step_store.STORE_VARIABLE)
  jax.config.update("jax_compilation_cache_dir", str(cache_dir / "absent"))
  assert step_store.StepStore.beside_cache() is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prefault is Linux-only")
def test_a_kept_programs_memory_is_touched_from_before_lowering(cache_dir, monkeypatch):
  monkeypatch.delenv(host_memory.PREFAULT_VARIABLE)
  x, y = _args()
  _keep(prefault=True)  # Its sizes recorded and its executable kept.
  record = host_memory.TemporariesRecord.beside_cache()
  key = host_memory.program_key(jax.jit(_program).trace(x, y).lower())
  nbytes, _ = record.get(key)
  record.put(key, nbytes, host_memory.resident_bytes() + (64 << 20))
  reading = step_store.StepStore.beside_cache().read(step_store.name("a program", (x, y)))
  assert reading.program == key  # Known before lowering: what the touch starts from.

  log = []
  prefault, timed = steps._prefault, steps._timed
  touches = []
  monkeypatch.setattr(steps, "_prefault", lambda record, k: log.append(("touch", k)) or (
      touches.append(prefault(record, k)) or touches[-1]))
  monkeypatch.setattr(steps, "_timed",
                      lambda laps, lap, *a: log.append((lap, None)) or timed(laps, lap, *a))
  laps = {}
  second = steps.compile_ahead(jax.jit(_program), x, y, laps=laps, keep="a program",
                               prefault=True).result()
  assert log == [("trace", None), ("touch", key), ("lower", None)]  # Touched before lowering,
  assert second.prefault.nbytes == nbytes and "stored_read" in laps  # for the kept program.
  jax.tree.map(np.testing.assert_array_equal, second(x, y), jax.jit(_program)(x, y))
  assert laps["prefault_mb"] == round(nbytes / 2**20)

  log.clear()  # Another program under the same name: that touch is handed back.
  other = steps.compile_ahead(jax.jit(_other), x, y, keep="a program", prefault=True).result()
  assert [entry[0] for entry in log] == ["trace", "touch", "lower", "touch"]
  assert touches[-1] is None and not touches[-2]._chunks  # Nothing known of _other.
  touches[-2]._thread.join(60)
  assert not touches[-2]._thread.is_alive()
  jax.tree.map(np.testing.assert_array_equal, other(x, y), jax.jit(_other)(x, y))


def test_a_train_steps_two_programs_are_kept_read_back_and_step_as_train_step(cache_dir,
                                                                            monkeypatch):
  """steps.TrainStep: the gradients and the optimiser's update, each kept and read back (the
  update's laps apart), both looked up before either is traced and read on one thread in the
  order the step runs them; the step is train_step's, the state donated."""
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  from jaxpose import families, optim, parallel  # pylint: disable=g-import-not-at-top
  config = quickstart.get_config("tiny")
  family, mesh = families.create_family(config), parallel.make_mesh()
  phase = optim.phases(config, 64)[0]
  tx = steps.create_optimizer(config, 64, phase, layer_groups=family.layer_groups)
  fresh = lambda: steps.create_train_state(family, tx, jax.random.key(0), mesh)  # noqa: E731
  rng, n, size = np.random.default_rng(0), config.batch_size, config.input_size
  batch = {"image": rng.uniform(-0.5, 0.5, (n, size, size, 3)).astype(np.float32),
           "joints": rng.uniform(8, size - 8, (n, 16, 2)).astype(np.float32),
           "visible": np.ones((n, 16), np.float32)}
  key, abstract = jax.random.key(1), steps.create_train_state(family, tx, jax.random.key(0),
                                                              mesh, abstract=True)
  expected = jax.device_get(jax.jit(steps.train_step, static_argnames="family")(
      fresh(), batch, key, family=family))
  first = steps.compile_ahead(steps.make_train_step(family, mesh, phase), abstract, batch, key,
                              keep="a step").result()
  assert isinstance(first, steps.TrainStep)
  state = fresh()
  out = first(state, batch, key)
  assert all(leaf.is_deleted() for leaf in jax.tree.leaves((state.params, state.opt_state)))
  for program in first.programs:
    program.after_done.result()
  assert len(_stored(cache_dir)) == 2  # The gradients' program and the update's.
  laps, log = {}, []
  read, deserialise, timed = (step_store.StepStore.read, step_store.Reading._deserialise,
                              steps._timed)
  monkeypatch.setattr(step_store.StepStore, "read", lambda self, key, submit=None: (
      log.append("look up") or read(self, key, submit)))
  monkeypatch.setattr(step_store.Reading, "_deserialise", lambda self, payload: (
      log.append(("read", threading.current_thread().name, os.path.basename(self.path)))
      or deserialise(self, payload)))
  monkeypatch.setattr(steps, "_timed", lambda laps, name, fn, *args: (
      log.append(name) or timed(laps, name, fn, *args)))
  second = steps.compile_ahead(steps.make_train_step(family, mesh, phase), abstract, batch, key,
                               laps=laps, keep="a step").result()
  assert "stored_read" in laps and "stored_read" in laps["update"]
  assert [e for e in log if isinstance(e, str)][:3] == ["look up", "look up", "trace"], log
  reads = [entry for entry in log if not isinstance(entry, str)]
  assert len({thread for _, thread, _ in reads}) == 1 and reads[0][1].startswith("step_store")
  names = step_store.names(["a step\ngradients", "a step\nupdate"], (abstract, batch, key))
  assert [f for _, _, f in reads] == [f"{n}.step" for n in names], (reads, names)
  for got in (out, second(fresh(), batch, key)):
    got = jax.device_get(got)  # The same values; rounding may differ where XLA fuses apart.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), got,
                 expected)
    assert int(got[0].step) == 1 and set(got[1]) == set(expected[1])


def _segmented_setup():
  """A 3-stack hourglass's segmented step (jitted), its abstract state, a fresh-state maker,
  a batch and a key."""
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  from jaxpose import families, parallel  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  config = quickstart.get_config("tiny")
  config.model.num_stacks = 3
  family, mesh, tx = families.create_family(config), parallel.make_mesh(), optax.sgd(0.02)
  make = lambda: steps.make_train_step(family, mesh, segmented=True)  # noqa: E731
  fresh = lambda: steps.create_train_state(family, tx, jax.random.key(0), mesh)  # noqa: E731
  rng, n, size = np.random.default_rng(0), config.batch_size, config.input_size
  batch = parallel.global_batch(
      {"image": rng.uniform(-0.5, 0.5, (n, size, size, 3)).astype(np.float32),
       "joints": rng.uniform(8, size - 8, (n, 16, 2)).astype(np.float32),
       "visible": np.ones((n, 16), np.float32)}, mesh)
  abstract = steps.create_train_state(family, tx, jax.random.key(0), mesh, abstract=True)
  return make, abstract, fresh, batch, jax.random.key(1)


def test_a_kept_segmented_step_is_traced_beside_its_first_call_and_steps_the_same(
    cache_dir, monkeypatch):
  """steps.SegmentedStep with programs kept (a warm start): `compile_ahead` traces nothing and
  hands the step over at once; its first call traces the programs on a thread, in the order it
  runs them, and runs each as soon as it is read back: the same values to the bit as the step
  that compiled them, over two steps. A trace that fails on the thread fails the call."""
  make, abstract, fresh, batch, key = _segmented_setup()
  first = steps.compile_ahead(make(), abstract, batch, key, keep="a step").result()
  assert sorted(first.compiled) == sorted(first.jitted)  # Cold: compiled before the call.
  expected = []
  state = fresh()
  for i in range(2):
    state, metrics = first(state, batch, jax.random.fold_in(key, i))
    expected.append(jax.device_get((state, metrics)))
  for program in first.compiled.values():
    if isinstance(program, host_memory.FirstCall):
      program.after_done.result()
  kept = len(_stored(cache_dir))
  assert kept == len(first.jitted)  # All 12 (StepStore.min_compile_s is 0 here).

  laps = {}
  second = steps.compile_ahead(make(), abstract, batch, key, laps=laps, keep="a step").result()
  assert second.compiled == {} and "trace" not in laps and "trace_beside" not in laps
  state = fresh()
  for i in range(2):
    state, metrics = second(state, batch, jax.random.fold_in(key, i))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get((state, metrics)), expected[i])
  assert laps["trace_beside"] > 0
  assert sum("stored_read" in laps[name] for name in second.jitted) == kept
  assert sorted(second.compiled) == sorted(second.jitted)
  assert not any(isinstance(p, host_memory.FirstCall) for p in second.compiled.values())

  # Where tracing fails on the thread, the step's call raises that error (it does not wait).
  trace = steps.SegmentedStep.trace

  def failing(self, state, batch, rng, each):
    def each_until_metrics(entry):
      if entry[0] == "metrics":
        raise ValueError("the metrics' trace failed")
      each(entry)
    return trace(self, state, batch, rng, each_until_metrics)

  monkeypatch.setattr(steps.SegmentedStep, "trace", failing)
  third = steps.compile_ahead(make(), abstract, batch, key, keep="a step").result()
  with pytest.raises(ValueError, match="the metrics' trace failed"):
    third(fresh(), batch, key)
