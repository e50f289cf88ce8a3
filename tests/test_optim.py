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


def _alike_subtrees(seed: int) -> dict:
  """Parameters with two alike top-level subtrees ("s0", "s1"), one unlike them ("t") and a
  leaf at the top ("g")."""
  k = iter(jax.random.split(jax.random.key(seed), 8))
  block = lambda: {"conv": {"kernel": jax.random.normal(next(k), (3, 3, 4, 4))},
                   "bn": {"scale": jax.random.normal(next(k), (4,))}}
  return {"s0": block(), "s1": block(), "t": {"w": jax.random.normal(next(k), (5,))},
          "g": jax.random.normal(next(k), (2,))}


@pytest.mark.parametrize("rule, phases, groups", [
    ("rmsprop", None, False), ("sgd", None, False), ("sgd", None, True),
    ("rmsprop", (("p", 3, "s0,s1"),), False)])
def test_by_subtree_updates_as_the_rule_does_to_the_bit(monkeypatch, rule, phases, groups):
  c = _config(name=rule, learning_rate=0.01, warmup_steps=2, decay_epochs=(0.1,))
  c.optimizer.weight_decay = 0.1
  if phases:
    c.phases = phases
  layer_groups = ((lambda p: {k: "x2" if k.startswith("s") else "x1" for k in p},
                   {"x2": (2.0, 0.0), "x1": (1.0, 1.0)}) if groups else None)
  phase = optim.phases(c, 20)[0]
  params = _alike_subtrees(0)

  def run(tx):
    state = tx.init(params)

    @jax.jit
    def step(p, s, g):
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s

    p = params
    for i in range(4):  # Across the warm-up's end and the piecewise boundary (step 2).
      p, state = step(p, state, _alike_subtrees(i + 1))
    return p, state

  tx = optim.create_optimizer(c, 20, phase, layer_groups=layer_groups)
  assert "update_subtree" in str(jax.make_jaxpr(tx.update)(params, tx.init(params), params))
  got = run(tx)
  with monkeypatch.context() as m:
    m.setattr(optim, "by_subtree", lambda tx: tx)
    want = run(optim.create_optimizer(c, 20, phase, layer_groups=layer_groups))
  assert jax.tree.structure(got) == jax.tree.structure(want)  # The same state: checkpoints.
  jax.tree.map(np.testing.assert_array_equal, got, want)
  if phases:  # Frozen subtrees stay put.
    np.testing.assert_array_equal(got[0]["t"]["w"], params["t"]["w"])


def test_by_subtree_traces_alike_subtrees_once():
  tx = optim.by_subtree(optax.rmsprop(0.01))
  params = _alike_subtrees(0)
  jaxpr = jax.make_jaxpr(tx.update)(params, tx.init(params), params)
  calls = [e.params["jaxpr"] for e in jaxpr.eqns if e.primitive.name in ("jit", "pjit")
           and e.params["name"] == "update_subtree"]
  assert len(calls) == 2 and calls[0] is calls[1]  # "s1" finds the trace "s0" made.
  # "t" and "g", alike to nothing, are traced as tx traces them: none of their own.
  unlike = {k: params[k] for k in ("t", "g")}
  assert not [e for e in jax.make_jaxpr(tx.update)(unlike, tx.init(unlike), unlike).eqns
              if e.primitive.name in ("jit", "pjit") and e.params["name"] == "update_subtree"]
