"""Trainer: a real step lowers the loss, the step traces once, resume is exact, bad input."""

import dataclasses
import logging
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

import helpers
from configs import quickstart
from jaxpose import checkpoints
from jaxpose import evaluate
from jaxpose import families
from jaxpose import parallel
from jaxpose import steps
from jaxpose import train
from jaxpose.data import datasets
from jaxpose.data import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(tmp_path, **overrides):
  return helpers.tiny_config(tmp_path / "tfds", **overrides)


_source = helpers.dots_source


def _setup(config):
  mesh = parallel.make_mesh()
  family = families.create_family(config)
  tx = train.create_optimizer(config, 100)
  state = train.create_train_state(family, tx, jax.random.key(0), mesh)
  return mesh, family, state


def _batch(family, source, config, mesh, step=0):
  ds = pipeline.train_dataset(source, input_size=family.input_size, target_fn=family.target_fn,
                              augment=pipeline.Augment(), global_batch_size=config.batch_size,
                              seed=0, start_step=step)
  return parallel.global_batch(next(ds.as_numpy_iterator()), mesh)


def _batch_with_targets(family, source, config, mesh):
  return helpers.with_heatmap_targets(config, jax.device_get(_batch(family, source, config,
                                                                    mesh)))


def test_real_training_steps_lower_the_loss_and_the_step_traces_once(tmp_path):
  config = _config(tmp_path)
  config.optimizer.warmup_steps = 0
  mesh, family, state = _setup(config)
  traces = []
  loss_fn = family.loss

  def counting_loss(*args, **kwargs):
    traces.append(1)
    return loss_fn(*args, **kwargs)

  family = dataclasses.replace(family, loss=counting_loss)
  step = train.make_train_step(family, mesh)
  batch = _batch(family, _source(), config, mesh)
  losses = []
  for i in range(8):
    state, metrics = step(state, batch, jax.random.key(i))
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0] - 0.05, losses
  assert len(traces) == 1
  assert int(state.step) == 8


def test_the_abstract_state_and_the_state_share_one_trace_of_the_initialiser(tmp_path):
  config = _config(tmp_path)
  mesh = parallel.make_mesh()
  family = families.create_family(config)
  traces = []
  init = family.init

  def counting_init(rng):
    traces.append(1)
    return init(rng)

  # Layer groups as CPM's hold a dict: the family is not hashable, which must not matter.
  family = dataclasses.replace(family, init=counting_init, layer_groups=(None, {"all": (1, 1)}))
  tx = train.create_optimizer(config, 100)
  abstract = train.create_train_state(family, tx, jax.random.key(0), mesh, abstract=True)
  state = train.create_train_state(family, tx, jax.random.key(0), mesh)
  assert len(traces) == 1
  assert jax.tree.map(lambda a: (a.shape, a.dtype), abstract) == jax.tree.map(
      lambda a: (a.shape, a.dtype), state)
  other = train.create_train_state(family, tx, jax.random.key(1), mesh)  # Same types: no trace.
  assert len(traces) == 1
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(other.params),
                                                      jax.tree.leaves(state.params)))


def test_loss_choices_and_missing_joints_are_ignored(tmp_path):
  config = _config(tmp_path)
  mesh, family, _ = _setup(config)
  batch = _batch_with_targets(family, _source(), config, mesh)
  outputs = (jnp.asarray(np.random.default_rng(0).normal(size=batch["targets"].shape)),)
  for kind in ("mse", "softmax_ce"):
    loss, _ = families.heatmap_losses(outputs, batch, kind)
    weights = batch["target_weight"].copy()
    weights[:, 3] = 0
    changed = dict(batch, target_weight=weights)
    noisy = outputs[0].at[..., 3].add(100.0)
    l1, _ = families.heatmap_losses(outputs, changed, kind)
    l2, _ = families.heatmap_losses((noisy,), changed, kind)
    assert np.isfinite(loss) and l1 == pytest.approx(float(l2), rel=1e-6)
  with pytest.raises(ValueError, match="Unknown loss"):
    families.heatmap_losses(outputs, batch, "l1")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  """One uninterrupted 6-step quickstart:tiny run, shared by the tests below."""
  tmp = tmp_path_factory.mktemp("full")
  table = train.train_and_evaluate(_config(tmp), str(tmp / "work"))
  return tmp, table


def test_uint8_crops_train_end_to_end_and_resampling_on_device_needs_a_precrop(full_run):
  """config.augment_on_device (the paper configs' default) sends uint8 crops and needs no
  pre-crop; config.resample_on_device does, and says so before any step."""
  tmp, _ = full_run
  table = train.train_and_evaluate(_config(tmp, augment_on_device=True, num_train_steps=2),
                                   str(tmp / "uint8"))
  assert 0 <= table["Total"] <= 100
  with pytest.raises(ValueError, match="resample_on_device.*precrop"):
    train.train_and_evaluate(_config(tmp, augment_on_device=True, resample_on_device=True),
                             str(tmp / "pixels"))


def _compiled(step) -> bool:
  """Whether a train step's program is compiled, or both of a `steps.TrainStep`'s (config
  `update_apart`): wrapped (FirstCall) where the process's first step records or touches its
  temporaries, or keeps a program."""
  return all(isinstance(getattr(p, "compiled", p), jax.stages.Compiled)
             for p in steps.step_programs(step))


def test_train_resume_is_bit_exact_and_eval_deterministic(full_run, tmp_path, monkeypatch):
  tmp, table = full_run
  assert 0 <= table["Total"] <= 100
  half = _config(tmp, num_train_steps=3)
  monkeypatch.chdir(tmp_path)
  abstract = []  # Per state built: shapes only (to compile for, restore into) or real values.
  create = train.create_train_state
  monkeypatch.setattr(train, "create_train_state", lambda *a, **kw: (
      abstract.append(kw.get("abstract", False)), create(*a, **kw))[1])
  first_steps = []  # The step each run's loop starts with.
  first = train._first_step_fn  # pylint: disable=protected-access
  monkeypatch.setattr(train, "_first_step_fn", lambda *a: (
      first_steps.append(first(*a)), first_steps[-1])[1])
  train.train_and_evaluate(half, "resumed")  # A relative workdir, as users type it.
  assert (tmp_path / "resumed" / "checkpoints" / "3").exists()
  assert abstract == [True, False]  # Shapes for the step's compilation, then the values.
  with pytest.raises(ValueError, match="num_train_steps: checkpoint 3, now 6"):
    train.train_and_evaluate(_config(tmp), str(tmp_path / "resumed"))  # A longer run ...
  train.train_and_evaluate(_config(tmp), str(tmp_path / "resumed"),  # ... only when asked;
                           allow_inexact_resume=True)  # exact here: still inside the warm-up.
  # The resume restores into the shapes the step compiles for (the refused run built none).
  assert abstract[2:] == [True]
  # Both runs' loops start with the step compiled on a thread while the state was made.
  assert len(first_steps) == 2
  assert all(_compiled(f) for f in first_steps)
  mesh = parallel.make_mesh()
  _, _, v_full, s1 = evaluate.load_checkpoint(str(tmp / "work"), mesh)
  _, _, v_res, s2 = evaluate.load_checkpoint(str(tmp_path / "resumed"), mesh)
  assert s1 == s2 == 6
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(v_full), jax.device_get(v_res))
  r1 = evaluate.evaluate_checkpoint(str(tmp / "work"))
  r2 = evaluate.evaluate_checkpoint(str(tmp / "work" / "checkpoints" / "6"))
  assert r1["table"] == r2["table"]
  assert r1["table"]["Total"] == pytest.approx(table["Total"])
  assert "Head Shoulder Elbow Wrist Hip Knee Ankle Total" in " ".join(r1["text"].split())
  out = tmp / "work" / "eval" / "validation_step6"
  names = sorted(os.path.basename(p) for p in r1["outputs"])
  assert names == ["overlays_best_worst.png", "pck_curves.png", "predictions.npz"]
  assert all((out / n).stat().st_size > 0 for n in names)
  saved = np.load(out / "predictions.npz")
  assert saved["preds"].shape == (32, 16, 2) and saved["id"].tolist() == list(range(32))


def test_rerunning_a_finished_run_says_so_and_changes_nothing(full_run, caplog):
  tmp, _ = full_run
  checkpoints_dir = tmp / "work" / "checkpoints"
  before = sorted((p.name, p.stat().st_mtime_ns) for p in checkpoints_dir.iterdir())
  # absl's own logger, at INFO here whatever verbosity an earlier test in this process left.
  with caplog.at_level(logging.INFO, logger="absl"):
    assert train.train_and_evaluate(_config(tmp), str(tmp / "work")) == {}
  assert "Already trained: step 6 of 6; nothing to do" in caplog.text
  assert "Training hourglass" not in caplog.text
  assert sorted((p.name, p.stat().st_mtime_ns) for p in checkpoints_dir.iterdir()) == before


def test_workdir_with_another_models_checkpoint_is_refused(full_run):
  tmp, _ = full_run
  other = _config(tmp, num_train_steps=8)
  other.model.features = 8
  with pytest.raises(ValueError, match="different model"):
    train.train_and_evaluate(other, str(tmp / "work"))
  assert sorted(int(p.name) for p in (tmp / "work" / "checkpoints").iterdir()
                if p.name.isdigit()) == [3, 6]  # Nothing written, nothing lost.


def test_missing_checkpoint_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    evaluate.load_checkpoint(str(tmp_path / "nowhere"), parallel.make_mesh())
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    evaluate.load_checkpoint(str(tmp_path / "empty"), parallel.make_mesh())


def test_undecodable_image_is_named(tmp_path):
  src = _source(n=6)
  images = src.images.numpy().tolist()
  images[4] = b"\xff\xd8\xff\xe0 this is not a jpeg"
  bad = pipeline.Source("broken", tf.constant(images), src.annotations, src.skeleton)
  with pytest.raises(ValueError, match=r"index 4 \(id 4\)"):
    pipeline.check_decodable(bad, range(6))
  config = _config(tmp_path)
  mesh, family, state = _setup(config)
  with pytest.raises(ValueError, match="Undecodable image.*index 4"):
    evaluate.predict_split({"params": state.params, **state.model_state}, family,
                           bad, mesh, local_batch_size=2)


def test_non_finite_loss_stops_with_step_number():
  history = [(1, {"loss": np.float32(1.0)}), (2, {"loss": np.float32(np.nan)})]
  with pytest.raises(train.NonFiniteLossError, match="loss=nan at step 2"):
    train._check_finite(history)


def test_unknown_config_key_is_an_error_naming_it(tmp_path):
  proc = subprocess.run(
      [sys.executable, "train.py", "--config", "configs/quickstart.py:tiny",
       "--workdir", str(tmp_path / "w"), "--config.learning_rat=0.1"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "learning_rat" in proc.stderr


def _phased_tiny(family, tmp_path, **model):
  """A family's tiny quickstart (3 phases of 3 steps) with `model` overrides, checkpointed at
  its phases' ends, a preemption's step and its last step; evaluated only at its end."""
  c = quickstart.get_config(f"{family}-tiny")
  c.model.update(model)
  c.dataset.data_dir = str(tmp_path / "tfds")
  c.checkpoint_every_steps = 1000
  c.eval_every_steps = 1000
  return c


def test_resume_inside_a_later_phase_is_bit_exact(tmp_path, monkeypatch):
  """DeepPose-tiny trains stage by stage (3 phases of 3 steps); stopped inside phase 2 (after
  its hook measured stage 1's errors) and resumed, it ends where the uninterrupted run ends.
  Every phase starts with its step compiled ahead (the later ones while the one before
  trained)."""
  entered = []  # (phase index, its step compiled ahead?) as each loop enters a phase.
  step_fn = train._step_fn  # pylint: disable=protected-access
  monkeypatch.setattr(train, "_step_fn", lambda run, phase, ahead: (entered.append(
      (phase.index, isinstance(f := step_fn(run, phase, ahead), steps.TrainStep) and
       _compiled(f))), f)[1])

  def config():  # The resumed step keys must drive dropout as the first run's.
    c = _phased_tiny("deeppose", tmp_path, dropout_rate=0.2)
    c.update_apart = True  # The step as two programs (steps.TrainStep; quickstarts: one).
    return c

  full = config()
  train.train_and_evaluate(full, str(tmp_path / "full"))
  half = config()
  half.phases = (("stage1", 3, "stage1"), ("stage2", 2, "stage2"))  # Stops at step 5.
  train.train_and_evaluate(half, str(tmp_path / "split"))
  train.train_and_evaluate(full, str(tmp_path / "split"), allow_inexact_resume=True)
  mesh = parallel.make_mesh()
  _, _, a, s1 = evaluate.load_checkpoint(str(tmp_path / "full"), mesh)
  _, _, b, s2 = evaluate.load_checkpoint(str(tmp_path / "split"), mesh)
  assert s1 == s2 == 9
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))
  abstract = families.eval_shape_variables(families.create_family(full))
  trained = [checkpoints.restore_variables(tmp_path / run / "checkpoints", 9, abstract)
             for run in ("full", "split")]
  jax.tree.map(np.testing.assert_array_equal, *trained)  # Training's error statistics too.
  assert float(np.abs(trained[0]["cascade"]["cov"][0]).sum()) > 0  # Stage 1's were measured.
  # The full run, the run stopped at step 5, the run resumed inside phase 2.
  assert entered == [(0, True), (1, True), (2, True), (0, True), (1, True), (1, True), (2, True)]


def test_ief_frozen_path_resumes_inside_a_later_phase_bit_exact(tmp_path, monkeypatch):
  """IEF-tiny with the paper's frozen fixed path (2 phases of 3 steps): stopped inside phase 2
  (a preemption notice at step 4) and resumed, it ends where the uninterrupted run ends, so the
  network frozen when phase 2 began came back from the checkpoint."""
  # One Inception module: the program compiles in half the time (46 -> 21 s on a cold cache).
  full = _phased_tiny("ief", tmp_path, fixed_path="frozen", inception_modules=("3a",))
  full.phases = full.phases[:2]
  train.train_and_evaluate(full, str(tmp_path / "full"))
  with monkeypatch.context() as patch:
    patch.setattr(train.preemption_lib.Preemption, "reached", lambda self, step=None: step == 4)
    train.train_and_evaluate(full, str(tmp_path / "split"))
  assert checkpoints.manager(tmp_path / "split" / "checkpoints", full).latest_step() == 4
  train.train_and_evaluate(full, str(tmp_path / "split"))
  mesh = parallel.make_mesh()
  _, _, a, s1 = evaluate.load_checkpoint(str(tmp_path / "full"), mesh)
  assert s1 == 6 and "ief_path" not in a  # Evaluation reads the network alone.
  abstract = families.eval_shape_variables(families.create_family(full))
  trained = [checkpoints.restore_variables(tmp_path / run / "checkpoints", 6, abstract)
             for run in ("full", "split")]
  jax.tree.map(np.testing.assert_array_equal, *trained)  # The frozen network too.
  frozen, params = trained[0]["ief_path"]["step1"]["params"], trained[0]["params"]
  assert any(np.any(u != v) for u, v in zip(jax.tree.leaves(frozen), jax.tree.leaves(params)))


def test_checkpoints_from_before_the_family_interface_still_evaluate(tmp_path):
  """The old train state kept `batch_stats` beside `params` (and the optimiser state)."""
  config = _config(tmp_path)
  family = families.create_family(config)
  variables = families.init_variables(family, jax.random.key(1))
  old = {"step": np.int32(6), "params": variables["params"],
         "batch_stats": variables["batch_stats"],
         "opt_state": [np.zeros(3, np.float32)]}
  manager = checkpoints.manager(tmp_path / "old" / "checkpoints", config)
  checkpoints.save(manager, old, config, 6)
  manager.wait_until_finished()
  _, _, restored, step = evaluate.load_checkpoint(str(tmp_path / "old"), parallel.make_mesh())
  assert step == 6
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(variables),
               jax.device_get(restored))


def test_every_batch_size_is_checked_at_start(tmp_path):
  config = _config(tmp_path, eval_batch_size=0)
  with pytest.raises(ValueError, match="eval_batch_size=0"):
    train.train_and_evaluate(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()  # Refused before anything was written.


def test_init_and_step_keys_are_independent():
  init_key, train_key = train.seed_keys(0)
  keys = [init_key] + [jax.random.fold_in(train_key, s) for s in range(3)]
  data = [tuple(np.asarray(jax.random.key_data(k)).ravel()) for k in keys]
  assert len(set(data)) == len(data)


def test_the_logged_grad_norm_is_the_global_norm_in_a_few_reductions():
  """The train step's `grad_norm`: the global norm optax.tree.norm computes, without a reduction
  per leaf (on a CPU each became a call of its own in the step's program: a quarter of the
  2-stack's)."""
  rng = np.random.default_rng(0)
  tree = {"kernels": [rng.normal(size=(3, 3, 64, 128)).astype(np.float32) for _ in range(3)],
          "biases": [rng.normal(size=(n,)).astype(np.float32) for n in range(1, 300)],
          "half": rng.normal(size=(8, 8)).astype(jnp.bfloat16)}
  # The reference in float64 numpy: optax.tree.norm itself, one reduction per leaf, took ~9 s to
  # compile here (and ~70 s op by op, a program per bias shape).
  expected = np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64)))
                         for x in jax.tree.leaves(tree)))
  np.testing.assert_allclose(jax.jit(steps._global_norm)(tree), expected, rtol=1e-6)
  # One reduction per large leaf (3), one for the 300 small ones, one to add the sums.
  assert str(jax.make_jaxpr(steps._global_norm)(tree)).count("reduce_sum") == 5
  assert float(steps._global_norm({})) == 0.0


def test_the_gradients_program_writes_each_statistic_over_its_own_buffer():
  """The gradients' program (steps.TrainStep) donates the model state: jit gives each donated
  buffer to the first output of its shape, so every running statistic must go to its own new
  value, not to a gradient of the same shape (which made XLA copy every statistic first: 390
  of the 2-stack's 2,297 calls)."""
  config = quickstart.get_config("tiny")
  family, mesh = families.create_family(config), parallel.make_mesh()
  tx = train.create_optimizer(config, 100)
  state = train.create_train_state(family, tx, jax.random.key(0), mesh, abstract=True)
  n, size = config.batch_size, config.input_size
  batch = {"image": jax.ShapeDtypeStruct((n, size, size, 3), jnp.float32),
           "joints": jax.ShapeDtypeStruct((n, 16, 2), jnp.float32),
           "visible": jax.ShapeDtypeStruct((n, 16), jnp.float32)}
  gradients = steps.make_train_step(family, mesh).gradients
  header = gradients.lower(*steps.TrainStep.gradients_args(state, batch, jax.random.key(1))
                           ).compile().as_text().splitlines()[0]
  aliases = {int(out): int(arg) for out, arg in
             re.findall(r"\{(\d+)\}: \((\d+), \{\}, may-alias\)", header)}
  params, statistics = (len(jax.tree.leaves(t)) for t in (state.params, state.model_state))
  assert statistics > 0
  assert aliases == {i: params + i for i in range(statistics)}


def test_precise_batch_stats_average_the_layers_batch_statistics(tmp_path):
  """steps.precise_batch_stats: each BatchNorm's running statistics become the mean of what the
  phase's training loss computes on the batches (read back from one training step's running
  update, r' = 0.9 r + 0.1 b); nothing else in the state changes, nor its tree."""
  config = quickstart.get_config("ief-tiny")
  config.dataset.data_dir = str(tmp_path / "tfds")
  mesh = parallel.make_mesh()
  family = families.create_family(config)
  source = datasets.load_source(config.dataset, "train")
  state = train.create_train_state(family, train.create_optimizer(config, 100),
                                   jax.random.key(0), mesh)
  batches = [_batch(family, source, config, mesh, step) for step in (0, 1)]
  rngs = [jax.random.key(1), jax.random.key(2)]
  moments = steps.make_batch_moments_step(family, mesh, phase=1)

  @jax.jit
  def implied(batch, rng):  # b = (r' - 0.9 r) / 0.1 after one training-mode loss.
    _, (new, _) = family.loss(state.params, state.model_state, batch, rng, phase=1)
    return jax.tree.map(lambda n, o: (n - 0.9 * o) / 0.1, new["batch_stats"],
                        state.model_state["batch_stats"])

  precise = steps.precise_batch_stats(state, moments, zip(batches, rngs))
  want = jax.tree.map(lambda a, b: (a + b) / 2, *[implied(b, r) for b, r in zip(batches, rngs)])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               precise.model_state["batch_stats"], want)
  before = jax.tree.leaves(state.model_state["batch_stats"])
  after = jax.tree.leaves(precise.model_state["batch_stats"])
  assert max(float(jnp.abs(a - b).max()) for a, b in zip(after, before)) > 1e-3  # It moved.
  assert jax.tree.structure(precise) == jax.tree.structure(state)
  for part in ("params", "opt_state", "step"):
    jax.tree.map(np.testing.assert_array_equal, getattr(precise, part), getattr(state, part))
  assert precise.model_state["ief"] is state.model_state["ief"]
  # Without BatchNorm statistics the state comes back as it was.
  plain = state.replace(model_state={"ief": state.model_state["ief"]})
  assert steps.precise_batch_stats(plain, moments, zip(batches, rngs)) is plain


def test_precise_batch_stats_at_phase_ends_resume_bit_exact(full_run, tmp_path, monkeypatch):
  """The tiny hourglass in 2 phases of 2 steps with config.precise_bn_batches: the statistics
  are re-estimated once at each phase's end; a run preempted at the end of phase 1 (saved after
  its re-estimate) and resumed does not repeat it, and ends where the uninterrupted run ends."""
  def config():  # The data full_run built.
    return _config(full_run[0], phases=(("first", 2, "*"), ("second", 2, "*")),
                   num_train_steps=4, checkpoint_every_steps=2, eval_every_steps=1000,
                   precise_bn_batches=2)

  calls = []
  precise = steps.precise_batch_stats
  monkeypatch.setattr(steps, "precise_batch_stats", lambda state, *a: (
      calls.append(int(state.step)), precise(state, *a))[1])
  train.train_and_evaluate(config(), str(tmp_path / "full"))
  assert calls == [2, 4]
  reached = train.preemption_lib.Preemption.reached
  monkeypatch.setattr(train.preemption_lib.Preemption, "reached",
                      lambda self, step=None: step == 2 or reached(self, step))
  train.train_and_evaluate(config(), str(tmp_path / "split"))  # Stops after step 2.
  monkeypatch.setattr(train.preemption_lib.Preemption, "reached", reached)
  train.train_and_evaluate(config(), str(tmp_path / "split"))
  assert calls[2:] == [2, 4]
  mesh = parallel.make_mesh()
  _, _, a, s1 = evaluate.load_checkpoint(str(tmp_path / "full"), mesh)
  _, _, b, s2 = evaluate.load_checkpoint(str(tmp_path / "split"), mesh)
  assert s1 == s2 == 4
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))
