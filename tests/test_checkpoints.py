"""Tests for jaxpose.checkpoints: resume signatures, damaged checkpoints, structure mismatches."""

import asyncio
import gc
import json
import logging
import os
import sys
import types

import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import quickstart
from jaxpose import checkpoints

STEPS = (4, 8, 12)


def _config():
  return quickstart.get_config("tiny")


# ---------------------------------------------------------------------------------------------
# Resume signature.


def _meta(config):
  """A checkpoint's meta as read back from disk (JSON round trip)."""
  return json.loads(json.dumps({"signature": checkpoints.model_signature(config),
                                "resume_signature": checkpoints.resume_signature(config)}))


def test_resume_signature_fields():
  config = _config()
  sig = checkpoints.resume_signature(config)
  assert sig["optimizer"]["learning_rate"] == config.optimizer.learning_rate
  assert sig["batch_size"] == 8 and sig["seed"] == 0 and sig["dataset.name"] == "synthetic"
  assert {"augment", "input_size", "output_size", "sigma", "loss", "mixed_precision",
          "dataset.config", "dataset.train_split", "num_train_steps"} <= set(sig)
  assert "num_epochs" not in sig  # num_train_steps = 6 > 0 overrides it.
  assert not sig.get("phases")  # No phases declared: one phase.
  config.num_train_steps = -1
  assert checkpoints.resume_signature(config)["num_epochs"] == 1
  config.phases = [ml_collections.ConfigDict({"trainable": "stage1", "steps": 100})]
  assert checkpoints.resume_signature(config)["phases"] == [{"trainable": "stage1",
                                                             "steps": 100}]
  del config["sigma"]  # A family without heat maps.
  assert "sigma" not in checkpoints.resume_signature(config)


def test_same_settings_resume_silently(caplog):
  checkpoints.check_compatible(_meta(_config()), _config(), "WORK")
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_changed_settings_are_refused_field_by_field():
  now = _config()
  now.batch_size = 16
  now.seed = 3
  now.optimizer.learning_rate = 1e-3
  now.augment.flip = False
  with pytest.raises(ValueError) as e:
    checkpoints.check_compatible(_meta(_config()), now, "WORK")
  message = str(e.value)
  assert message.startswith("WORK holds a checkpoint trained with different settings: ")
  for diff in ("config.batch_size: checkpoint 8, now 16", "config.seed: checkpoint 0, now 3",
               "config.optimizer.learning_rate: checkpoint 0.0015, now 0.001",
               "config.augment.flip: checkpoint true, now false"):
    assert diff in message
  assert "--allow_inexact_resume" in message and "not bit-exact" in message
  assert "\n" not in message and "model" not in message


def test_changed_phases_and_added_keys_are_named():
  then, now = _config(), _config()
  then.phases = [ml_collections.ConfigDict({"steps": 100}), ml_collections.ConfigDict(
      {"steps": 50})]
  now.phases = [ml_collections.ConfigDict({"steps": 100}), ml_collections.ConfigDict(
      {"steps": 80})]
  now.optimizer.momentum = 0.5
  with pytest.raises(ValueError, match=r"config\.optimizer\.momentum: checkpoint 0\.9, now "
                                       r"0\.5; config\.phases\[1\]\.steps: checkpoint 50, "
                                       r"now 80\."):
    checkpoints.check_compatible(_meta(then), now, "WORK")


def test_allow_inexact_resume_warns(caplog):
  now = _config()
  now.batch_size = 16
  with caplog.at_level(logging.WARNING):
    checkpoints.check_compatible(_meta(_config()), now, "WORK", allow_inexact_resume=True)
  assert any("config.batch_size: checkpoint 8, now 16" in r.getMessage()
             and "not bit-exact" in r.getMessage() for r in caplog.records)


def test_a_different_model_is_always_refused():
  now = _config()
  now.model.num_stacks = 2
  for allow in (False, True):
    with pytest.raises(ValueError, match="different model"):
      checkpoints.check_compatible(_meta(_config()), now, "WORK", allow_inexact_resume=allow)


def test_model_keys_added_later_read_as_the_value_that_trained_older_checkpoints(tmp_path):
  """An IEF checkpoint from before config.model.fixed_path trained with "current": read back,
  its config (what evaluation rebuilds the model from) and signature say so, so the quickstart
  (still "current") resumes it and the paper's "frozen" is another model."""
  then = quickstart.get_config("ief-tiny")
  del then.model["fixed_path"]
  manager = checkpoints.manager(tmp_path / "checkpoints", then)
  checkpoints.save(manager, {"count": jnp.int32(1)}, then, 1)
  manager.wait_until_finished()
  meta = checkpoints.read_meta(manager, 1)
  assert meta["config"]["model"]["fixed_path"] == "current"
  assert meta["signature"]["model"]["fixed_path"] == "current"
  now = quickstart.get_config("ief-tiny")
  assert now.model.fixed_path == "current"
  checkpoints.check_compatible(meta, now, "WORK")
  now.model.fixed_path = "frozen"
  with pytest.raises(ValueError, match="different model"):
    checkpoints.check_compatible(meta, now, "WORK")
  # A checkpoint that records the key keeps its own value.
  newer = checkpoints.with_added_model_keys({"config": {"model": now.model.to_dict()}})
  assert newer["config"]["model"]["fixed_path"] == "frozen"


def test_older_checkpoint_without_resume_signature_warns(caplog):
  meta = _meta(_config())
  del meta["resume_signature"]
  now = _config()
  now.batch_size = 16
  with caplog.at_level(logging.WARNING):
    checkpoints.check_compatible(meta, now, "WORK")
  assert any("no resume signature" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------
# Damaged checkpoints.


class _Dense(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.Dense(256)(x)


def _state(tx=None):
  model = _Dense()
  params = model.init(jax.random.key(0), jnp.zeros((1, 64)))["params"]
  return train_state.TrainState.create(apply_fn=model.apply, params=params,
                                       tx=tx or optax.sgd(0.1, momentum=0.9))


@pytest.fixture(name="saved")
def _saved(tmp_path):
  """Checkpoints at STEPS of a small TrainState (the kernel is the largest file, 64 KiB);
  returns (checkpoints dir, {step: the state saved})."""
  directory = tmp_path / "work" / "checkpoints"
  manager = checkpoints.manager(directory, _config())
  state, saved = _state(), {}
  grads = jax.tree.map(jnp.ones_like, state.params)
  for step in STEPS:
    state = state.apply_gradients(grads=grads)
    state = state.replace(step=step)
    checkpoints.save(manager, state, _config(), step)
    saved[step] = jax.device_get(state)
  manager.wait_until_finished()
  manager.close()
  return directory, saved


def _truncate_largest_file(step_dir) -> str:
  files = [os.path.join(d, f) for d, _, names in os.walk(step_dir / "state") for f in names]
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.truncate(os.path.getsize(largest) // 2)
  return os.path.relpath(largest, step_dir)


def _assert_same_state(restored, expected):
  got, want = jax.tree.leaves(jax.device_get(restored)), jax.tree.leaves(expected)
  assert len(got) == len(want) == 5  # step, bias, kernel, and their momentum.
  for a, b in zip(got, want):
    np.testing.assert_array_equal(a, b)


def test_restore_latest_intact_skips_a_truncated_step(saved, caplog):
  directory, states = saved
  damaged_file = _truncate_largest_file(directory / "12")
  assert os.path.basename(os.path.dirname(damaged_file)) == "d"  # An array data file.
  manager = checkpoints.manager(directory, _config())
  abstract = jax.eval_shape(_state)
  with pytest.raises(checkpoints.DamagedCheckpointError) as e:
    checkpoints.restore_step(manager, 12, abstract)
  assert str(e.value).startswith(f"checkpoint step 12 in {directory} is damaged or "
                                 f"unreadable: ValueError: OUT_OF_RANGE")
  assert "\n" not in str(e.value)
  assert sorted(manager.all_steps()) == [4, 8, 12]  # restore_step moves nothing.

  with caplog.at_level(logging.WARNING):
    state, step = checkpoints.restore_latest_intact(manager, abstract)
  assert step == 8
  _assert_same_state(state, states[8])
  moved = directory.parent / "damaged_checkpoints" / "12"
  assert (moved / damaged_file).exists() and not (directory / "12").exists()
  assert sorted(manager.all_steps()) == [4, 8]
  assert any("checkpoint step 12" in r.getMessage() and "OUT_OF_RANGE" in r.getMessage()
             and str(moved) in r.getMessage() for r in caplog.records)


def test_every_step_damaged_or_none_at_all(saved, tmp_path):
  directory, _ = saved
  for step in STEPS:
    (directory / str(step) / "state" / "_METADATA").write_text('{"tree_metadata": {')
  manager = checkpoints.manager(directory, _config())
  with pytest.raises(ValueError, match=r"Every checkpoint in .* is damaged or unreadable "
                                       r"\(steps 12, 8, 4, moved to .*damaged_checkpoints\)"):
    checkpoints.restore_latest_intact(manager, jax.eval_shape(_state))
  assert sorted(p.name for p in (directory.parent / "damaged_checkpoints").iterdir()) == [
      "12", "4", "8"]
  empty = checkpoints.manager(tmp_path / "empty" / "checkpoints", _config())
  assert checkpoints.restore_latest_intact(empty, jax.eval_shape(_state)) == (None, None)


def test_a_step_damaged_twice_keeps_both_copies(saved):
  directory, _ = saved
  manager = checkpoints.manager(directory, _config())
  (directory.parent / "damaged_checkpoints" / "12").mkdir(parents=True)
  (directory / "12" / "state" / "_METADATA").unlink()
  _, step = checkpoints.restore_latest_intact(manager, jax.eval_shape(_state))
  assert step == 8 and (directory.parent / "damaged_checkpoints" / "12.1" / "state").exists()


def test_unreadable_meta_is_damage(saved):
  directory, states = saved
  (directory / "12" / "meta" / "metadata").write_text('{"config": {')  # Half-written JSON.
  manager = checkpoints.manager(directory, _config())
  with pytest.raises(checkpoints.DamagedCheckpointError,
                     match=r"checkpoint step 12 in .* is damaged or unreadable: "
                           r"JSONDecodeError"):
    checkpoints.read_meta(manager, 12)
  state, step = checkpoints.restore_latest_intact(manager, jax.eval_shape(_state))
  assert step == 8
  _assert_same_state(state, states[8])
  assert (directory.parent / "damaged_checkpoints" / "12" / "meta").exists()


def test_a_differently_structured_state_is_not_damage(saved):
  directory, _ = saved
  manager = checkpoints.manager(directory, _config())
  adam = jax.eval_shape(lambda: _state(optax.adam(1e-3)))
  with pytest.raises(ValueError, match=r"checkpoint step 12 in .* holds a differently "
                                       r"structured state: .*leaves missing from the "
                                       r"checkpoint.*leaves not in the state"):
    checkpoints.restore_latest_intact(manager, adam)
  assert sorted(manager.all_steps()) == [4, 8, 12]
  assert not (directory.parent / "damaged_checkpoints").exists()
  with pytest.raises(FileNotFoundError, match=r"No checkpoint step 5 in .*steps \[4, 8, 12\]"):
    checkpoints.restore_step(manager, 5, jax.eval_shape(_state))


def test_any_pytree_state_round_trips(tmp_path):
  state = {"weights": jnp.arange(6.0).reshape(2, 3), "count": jnp.int32(7)}
  manager = checkpoints.manager(tmp_path / "checkpoints", _config())
  checkpoints.save(manager, state, _config(), 3)
  manager.wait_until_finished()
  restored, step = checkpoints.restore_latest_intact(manager, jax.eval_shape(lambda: state))
  assert step == 3 and int(restored["count"]) == 7
  np.testing.assert_array_equal(restored["weights"], state["weights"])
  meta = checkpoints.read_meta(manager, 3)
  assert meta["resume_signature"] == json.loads(json.dumps(
      checkpoints.resume_signature(_config())))


def _abandon_a_read_and_complete_it():
  """What a failed orbax restore leaves behind: a TensorStore read awaited on an event loop that
  was closed while it was pending. Completing it makes TensorStore call
  `loop.call_soon_threadsafe` on the closed loop and report the error as unraisable."""
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  promise, future = ts.Promise.new()

  async def abandoned_read():
    return await future

  async def failing_restore():
    asyncio.ensure_future(abandoned_read())
    await asyncio.sleep(0)
    raise ValueError("one array is unreadable")

  loop = asyncio.new_event_loop()
  with pytest.raises(ValueError):
    loop.run_until_complete(failing_restore())
  loop.close()
  promise.set_result(1)
  gc.collect()


def test_abandoned_reads_are_not_reported(monkeypatch):
  noise = checkpoints._AbandonedReadNoise  # pylint: disable=protected-access
  reported = []
  gc.collect()  # What earlier restores in this process abandoned is reported now, not below.
  monkeypatch.setattr(sys, "unraisablehook", reported.append)
  _abandon_a_read_and_complete_it()
  closed = [u for u in reported if str(u.exc_value) == "Event loop is closed"]
  assert len(closed) == 1 and noise.is_closed_loop_callback(closed[0])
  # By timing, an earlier test's abandoned reads can still be finalised here: they are noise too.
  assert all(noise.is_closed_loop_callback(u) for u in reported)

  reported.clear()
  monkeypatch.setattr(noise, "installed", False)
  noise.install()  # Wraps the recording hook.
  _abandon_a_read_and_complete_it()
  assert not reported
  other = types.SimpleNamespace(exc_value=RuntimeError("other"), exc_traceback=None)
  sys.unraisablehook(other)
  assert reported == [other]  # Everything else passes.

  record = logging.LogRecord("asyncio", logging.ERROR, "", 0, "Task was destroyed but it is "
                             "pending!\ntask: <Task coro=<f() at /x/orbax/checkpoint/y.py>>",
                             None, None)
  assert not noise.keep_log_record(record)
  record.msg = "Task was destroyed but it is pending!\ntask: <Task coro=<mine()>>"
  assert noise.keep_log_record(record)

