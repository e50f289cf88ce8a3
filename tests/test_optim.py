"""Optimisers, schedules and training phases."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import hourglass_mpii
from jaxpose import optim


def _config(**optimizer):
  c = hourglass_mpii.get_config("2")
  c.optimizer.update(optimizer)
  return c


def test_piecewise_boundaries_do_not_move_with_warmup():
  # 100 examples, batch 6 -> 16 steps per epoch; decay at epochs 60 and 90 -> steps 960, 1440.
  for warmup in (0, 100):
    c = _config(warmup_steps=warmup)
    lr = optim.schedule(c, 1600, optim.steps_per_epoch(c, 100))
    assert float(lr(959)) == pytest.approx(2.5e-4)
    assert float(lr(961)) == pytest.approx(2.5e-5)
    assert float(lr(1441)) == pytest.approx(2.5e-6)
  assert float(lr(50)) == pytest.approx(2.5e-4 * 50 / 100)  # Still warming up.


def test_step_schedule_is_caffes():
  c = _config(name="sgd", schedule="step", learning_rate=8e-5, decay_factor=0.333)
  c.optimizer.decay_steps = 10
  lr = optim.schedule(c, 100, 1)
  assert float(lr(9)) == pytest.approx(8e-5)
  assert float(lr(10)) == pytest.approx(8e-5 * 0.333)
  assert float(lr(25)) == pytest.approx(8e-5 * 0.333**2)


def test_phases_parse_and_locate_steps():
  c = _config()
  c.phases = (("stage1", 5, "*"), ("stage2", 3, "stage2"), ("both", 2, "stage1,stage2"))
  ps = optim.phases(c, 100)
  assert [(p.first_step, p.end_step) for p in ps] == [(0, 5), (5, 8), (8, 10)]
  assert ps[0].trainable is None and ps[2].trainable == ("stage1", "stage2")
  assert optim.total_steps(c, 100) == 10
  assert [optim.phase_at(ps, s).index for s in (0, 4, 5, 7, 8, 9, 10)] == [0, 0, 1, 1, 2, 2, 2]
  c.phases = (("bad", 0, "*"),)
  with pytest.raises(ValueError, match="num_steps=0"):
    optim.phases(c, 100)
  c.phases = (("bad", 3),)
  with pytest.raises(ValueError, match=r"phases\[0\]"):
    optim.phases(c, 100)


def test_without_phases_one_phase_trains_everything():
  c = _config()
  c.num_train_steps = 7
  (p,) = optim.phases(c, 100)
  assert (p.first_step, p.num_steps, p.trainable) == (0, 7, None)


def test_a_phase_updates_only_its_subtrees():
  c = _config(name="adam", learning_rate=0.1)
  c.phases = (("a", 1, "*"), ("b", 1, "b"))
  params = {"a": jnp.ones(3), "b": jnp.ones(2)}
  grads = jax.tree.map(jnp.ones_like, params)
  tx = optim.create_optimizer(c, 100, optim.phases(c, 100)[1])
  updates, _ = tx.update(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(new["a"], params["a"])
  assert np.all(np.asarray(new["b"]) < 1.0)
  c.phases = (("c", 1, "c"),)
  tx = optim.create_optimizer(c, 100, optim.phases(c, 100)[0])
  with pytest.raises(ValueError, match="trains \\['c'\\].*subtrees are \\['a', 'b'\\]"):
    tx.init(params)


def test_layer_groups_scale_learning_rate_and_decay():
  c = _config(name="sgd", learning_rate=1.0, schedule="constant", warmup_steps=0)
  c.optimizer.momentum = 0.0
  c.optimizer.weight_decay = 0.5
  params = {"w": jnp.full(2, 2.0), "b": jnp.full(2, 2.0)}
  groups = (lambda p: {"w": "x5", "b": "x2_nodecay"}, {"x5": (5.0, 1.0), "x2_nodecay": (2.0, 0.0)})
  tx = optim.create_optimizer(c, 100, layer_groups=groups)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], -5.0 * (1.0 + 0.5 * 2.0))
  np.testing.assert_allclose(updates["b"], -2.0 * 1.0)


def test_unknown_optimizer_and_schedule_are_named():
  with pytest.raises(ValueError, match="'lamb'"):
    optim.base_optimizer(_config(name="lamb"), 1e-3)
  with pytest.raises(ValueError, match="'linear'"):
    optim.schedule(_config(schedule="linear"), 10, 1)
