"""Every family through the one interface: a tiny variant trains, predicts, and its phases work."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from configs import hourglass2_mpii
from configs import quickstart
from jaxpose import families
from jaxpose import family as family_lib
from jaxpose import optim
from jaxpose import parallel
from jaxpose import steps
from jaxpose import train
from jaxpose.codecs import coordinate
from jaxpose.data import pipeline
from jaxpose.families import regression
from jaxpose.models import ief

FAMILIES = ("hourglass", "cpm", "tompson", "deeppose", "ief")


def _tiny(name):
  c = quickstart.get_config(f"{name}-tiny")
  c.optimizer.warmup_steps = 0
  return c


def _batch(config, family, mesh, source):
  ds = pipeline.train_dataset(source, input_size=family.input_size, target_fn=family.target_fn,
                              augment=pipeline.Augment(), global_batch_size=config.batch_size,
                              seed=0)
  return parallel.global_batch(next(ds.as_numpy_iterator()), mesh)


@pytest.mark.parametrize("name", FAMILIES)
def test_tiny_family_trains_and_predicts(name):
  config = _tiny(name)
  family = families.create_family(config)
  mesh = parallel.make_mesh()
  source = helpers.dots_source(n=8, size=64)
  phases = optim.phases(config, source.num_examples)
  state = train.create_train_state(family, train.create_optimizer(config, 8, phases[0]),
                                   jax.random.key(0), mesh)
  batch = _batch(config, family, mesh, source)
  step = train.make_train_step(family, mesh, phase=phases[0])
  before = jax.device_get(state.params)
  state, metrics = step(state, batch, jax.random.key(1))
  assert np.isfinite(float(metrics["loss"])), metrics
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), before, jax.device_get(state.params))
  trainable = phases[0].trainable or tuple(before)
  assert all(any(jax.tree.leaves(changed[k])) for k in trainable)
  assert not any(any(jax.tree.leaves(changed[k])) for k in before if k not in trainable)
  variables = {"params": state.params, **state.model_state}
  joints, scores = family.predict(variables, {"image": batch["image"]}, True)
  stages = 1 if joints.ndim == 3 else joints.shape[1]
  assert joints.shape[-2:] == (16, 2) and scores.shape == (config.batch_size, 16)
  assert stages == {"hourglass": 1, "cpm": 1, "tompson": 1, "deeppose": 3, "ief": 3}[name]
  assert np.all(np.isfinite(joints))
  if name == "tompson":  # Log beliefs: the score is the peak's spatial-softmax probability.
    assert config.model.spatial_model and family.codec.scores == "softmax"
    assert np.all((scores > 0) & (scores <= 1)), scores


@pytest.mark.parametrize("mode,remat", [("compiled", False), ("eager", False), ("eager", True)])
def test_both_ways_to_initialise_give_the_optimised_programs_values(mode, remat, monkeypatch):
  """families.run_init compiles without XLA's backend optimisation (code that runs once), or
  runs op by op (through remat's nested programs too), its nested programs (the initialisers'
  draws) compiled that way too, each once, but at backend level 1 where its calls draw many
  numbers (here: above the median program's): the same variables as the default compilation,
  to rounding, placed as asked."""
  config = _tiny("hourglass")
  config.remat = remat
  family = families.create_family(config)
  key = jax.random.key(5)
  mesh = parallel.make_mesh()
  compiled = []
  compile_init = family_lib.compile_init
  options = []
  program = family_lib._needed(jax.jit(family.init).trace(key))
  drawn = family_lib._numbers_drawn(program.jaxpr)
  monkeypatch.setattr(family_lib, "OP_BY_OP_OPTIMISED_MIN_NUMBERS",
                      int(np.median(list(drawn.values()))) + 1)
  monkeypatch.setattr(family_lib, "compile_init", lambda *a, **k: (
      compiled.append(a[0]) or options.append(k.get("options")) or compile_init(*a, **k)))
  ours = families.run_init(family.init, key, out_shardings=parallel.replicated(mesh), mode=mode)
  if mode == "eager":  # A program per distinct draw, not per parameter.
    draws = sum(eqn.primitive.name in ("jit", "pjit") for eqn in program.jaxpr.eqns)
    assert 1 < len(compiled) < draws, (len(compiled), draws)
    levels = [o["xla_backend_optimization_level"] for o in options]
    assert 0 < levels.count(1) < len(levels) and set(levels) == {0, 1}, levels
  else:
    assert len(compiled) == 1 and options == [None]  # compile_init's default: level 0.
    assert family_lib.INIT_COMPILER_OPTIONS == {"xla_backend_optimization_level": 0}
  default = jax.jit(family.init)(key)
  assert jax.tree.structure(ours) == jax.tree.structure(default)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), ours, default)
  assert all(leaf.sharding.is_equivalent_to(parallel.replicated(mesh), leaf.ndim)
             for leaf in jax.tree.leaves(ours))
  other = families.run_init(family.init, jax.random.key(6), mode=mode)  # The key is used.
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(other)))
  with pytest.raises(ValueError, match="Unknown init mode 'jit'"):
    families.run_init(family.init, key, mode="jit")


def test_an_eager_init_runs_only_what_the_variables_depend_on():
  """A flax init runs the model's forward pass for the shapes; op by op, run_init skips it (here
  a callback standing for it is never called) and gives the values the plain call gives."""
  calls = []

  def forward(x):
    calls.append(x.shape)
    return x

  def init(k):
    w = jax.random.normal(k, (3, 4))
    activations = jax.pure_callback(forward, jax.ShapeDtypeStruct((3, 4), jnp.float32), w)
    return {"w": w, "scale": jnp.ones(4) * jnp.sqrt(2.0), "unused": activations.shape[0]}

  key = jax.random.key(4)
  values = families.run_init(init, key, mode="eager")
  assert not calls
  jax.tree.map(np.testing.assert_array_equal, values, init(key))
  assert calls == [(3, 4)]  # The plain call ran it.


@pytest.mark.parametrize("mode", ["compiled", "eager"])
def test_an_eager_init_can_release_the_programs_it_compiled(mode):
  """With release_caches, an op-by-op initialiser empties JAX's in-memory caches afterwards (a
  jitted function's too); a compiled one leaves them. The values are the same either way."""
  init = lambda k: {"w": jax.random.normal(k, (3, 4)), "b": jnp.zeros(4)}
  key = jax.random.key(3)
  seen = jax.jit(lambda x: x + 1)
  seen(1)
  assert seen._cache_size() == 1
  kept = families.run_init(init, key, mode=mode)
  released = families.run_init(init, key, mode=mode, release_caches=True)
  jax.tree.map(np.testing.assert_array_equal, kept, released)
  assert seen._cache_size() == (0 if mode == "eager" else 1)


def test_init_runs_op_by_op_only_for_large_programs_without_loops():
  """The 2-stack hourglass's initialiser (3,753 equations its variables depend on, nested
  programs included) runs eagerly, with remat too (whose layers hide in nested programs: 297 at
  the top level); the quickstart's (1,730) and IEF's (2,089: every layer a shape of its own)
  are compiled, as is any with a loop that its values need (eagerly, a lax.scan compiles its
  whole body); a loop they do not need is not counted. Decided from the traced program (no
  compile here)."""
  key = jax.random.key(0)
  hourglass2 = families.create_family(hourglass2_mpii.get_config())
  assert families.init_mode(hourglass2.init, key) == "eager"
  rematted = hourglass2_mpii.get_config()
  rematted.remat = True
  assert families.init_mode(families.create_family(rematted).init, key) == "eager"
  assert families.init_mode(families.create_family(quickstart.get_config()).init, key) == "compiled"
  ief_family = families.create_family(_tiny("ief"))
  assert families.init_mode(ief_family.init, key) == "compiled"
  unrolled = lambda k: [jax.random.normal(jax.random.fold_in(k, i), (2,)) for i in range(1500)]
  looped = lambda k: jax.lax.scan(lambda c, _: (c, jax.random.normal(c, (2,))), k, None, 9)
  assert families.init_mode(unrolled, key) == "eager"
  assert families.init_mode(lambda k: (unrolled(k), looped(k)), key) == "compiled"
  assert families.init_mode(lambda k: (looped(k), unrolled(k))[1], key) == "eager"  # Unused.


def test_a_phase_differentiates_only_its_trainable_subtrees():
  """Tompson's spatial phase: the frozen detector's backward pass is not computed (fewer
  FLOPs), and the update is the one of differentiating everything and zeroing the rest."""
  config = _tiny("tompson")
  config.optimizer.name = "sgd"  # Updates linear in the gradients (Adam's first step is ~sign(g)),
  config.optimizer.learning_rate = 1.0  # and large enough to see through SoftPlus's flat end.
  family = families.create_family(config)
  mesh = parallel.make_mesh()
  source = helpers.dots_source(n=8, size=64)
  spatial = optim.phases(config, source.num_examples)[1]
  assert spatial.trainable == ("spatial",)
  state = train.create_train_state(family, train.create_optimizer(config, 8, spatial),
                                   jax.random.key(0), mesh)
  batch, key = _batch(config, family, mesh, source), jax.random.key(1)
  everything = train.make_train_step(family, mesh, phase=spatial.index)
  part = train.make_train_step(family, mesh, phase=spatial)

  def flops(step):  # The gradients' program's (steps.TrainStep): the backward pass is there.
    lowered = step.gradients.lower(*steps.TrainStep.gradients_args(state, batch, key))
    cost = lowered.compile().cost_analysis()
    return (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]

  assert flops(part) < 0.95 * flops(everything)  # 0.90 measured (tiny: the FFTs dominate)
  before = jax.device_get(state.params)
  copy = jax.tree.map(np.array, before)
  new_part, _ = part(state, batch, key)
  state = train.create_train_state(family, train.create_optimizer(config, 8, spatial),
                                   jax.random.key(0), mesh)
  new_all, _ = everything(state, batch, key)
  part_params, all_params = jax.device_get((new_part.params, new_all.params))
  jax.tree.map(np.testing.assert_array_equal, part_params["detector"], copy["detector"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               part_params["spatial"], all_params["spatial"])
  assert not any(jax.tree.leaves(jax.tree.map(np.array_equal, part_params["spatial"],
                                              copy["spatial"])))


def test_dropout_follows_the_step_key():
  config = _tiny("deeppose")
  config.model.dropout_rate = 0.5
  family = families.create_family(config)
  variables = families.init_variables(family, jax.random.key(0))
  params, state = families.split_variables(variables)
  mesh = parallel.make_mesh()
  batch = jax.device_get(_batch(config, family, mesh, helpers.dots_source(n=8, size=64)))
  loss = lambda key: float(family.loss(params, state, batch, key)[0])
  assert loss(jax.random.key(3)) == loss(jax.random.key(3))
  assert loss(jax.random.key(3)) != loss(jax.random.key(4))


def test_deeppose_later_stages_train_on_measured_errors():
  config = _tiny("deeppose")
  config.warm_start_stages = False  # The paper configs' default (the quickstart's is True).
  family = families.create_family(config)
  variables = families.init_variables(family, jax.random.key(0))
  n, k = 20, 16
  rng = np.random.default_rng(0)
  gt = rng.uniform(10, 50, (n, k, 2))
  offset = np.array([3.0, -2.0])
  preds = np.stack([gt + offset + rng.normal(0, 1.0, gt.shape)] * 3, axis=1)
  context = families.PhaseContext(ground_truth=(gt, np.ones((n, k))),
                                  predict_train=lambda v: (preds, gt, np.ones((n, k))))
  after = family.begin_phase(1, variables, context)
  size = config.input_size
  np.testing.assert_allclose(after["cascade"]["mean"][0], np.tile(offset / size, (k, 1)),
                             atol=0.6 / size)
  cov = np.asarray(after["cascade"]["cov"][0])
  np.testing.assert_allclose(cov[:, 0, 0], 1.0 / size**2, rtol=0.6)
  assert family.begin_phase(0, variables, context) is variables
  leaves = lambda v, s: jax.tree.leaves(v["params"][f"stage{s}"])
  same = lambda x, y: all(np.array_equal(a, b) for a, b in zip(x, y))
  assert not same(leaves(after, 2), leaves(after, 3))  # Stages start afresh.
  assert same(leaves(family.begin_phase(2, variables, context), 3), leaves(variables, 3))
  config.warm_start_stages = True  # Stage 3 then starts as stage 2 (its own copy).
  warm = families.create_family(config).begin_phase(2, variables, context)
  assert same(leaves(warm, 3), leaves(variables, 2)) and same(leaves(warm, 2), leaves(variables, 2))
  np.testing.assert_allclose(warm["cascade"]["mean"][1], np.tile(offset / size, (k, 1)),
                             atol=0.6 / size)


def test_ief_starts_from_the_mean_training_pose():
  config = _tiny("ief")
  family = families.create_family(config)
  variables = families.init_variables(family, jax.random.key(0))
  gt = np.zeros((2, 16, 2)) + np.array([[10.0, 20.0]])
  gt[1] += 4.0
  visible = np.ones((2, 16))
  visible[1, 0] = 0  # A missing joint does not count toward its mean.
  context = families.PhaseContext(ground_truth=(gt, visible), predict_train=None)
  mean = np.asarray(family.begin_phase(0, variables, context)["ief"]["mean_pose"])
  size = config.input_size
  np.testing.assert_allclose(mean[0], (np.array([10.0, 20.0]) - (size - 1) / 2) / size)
  np.testing.assert_allclose(mean[1], (np.array([12.0, 22.0]) - (size - 1) / 2) / size)


def test_ief_fixed_path_feeds_each_example_at_its_step():
  """FPC's phase t spreads the batch evenly over steps 0..t, and each example's pose is the
  network's own path from the mean pose at that step (run only for the examples that need it)."""
  counts = lambda n, t: np.diff(regression.fixed_path_steps(n, t) + [n]).tolist()  # noqa: E731
  assert [counts(8, t) for t in range(3)] == [[8], [4, 4], [3, 3, 2]]
  assert counts(5, 3) == [2, 1, 1, 1]
  family = families.create_family(_tiny("ief"))
  variables = families.init_variables(family, jax.random.key(0))
  n, phase = 5, 3
  images = jax.random.uniform(jax.random.key(1), (n, 64, 64, 3)) - 0.5
  y0 = jnp.broadcast_to(0.1 * jax.random.normal(jax.random.key(2), (16, 2)), (n, 16, 2))
  calls = []

  def correct(s, x, y):
    calls.append((s, x.shape[0]))
    return family.model.apply(variables, x, y, method=ief.IEF.correction)

  poses = jax.jit(lambda x, y: regression.fixed_path_poses(correct, x, y, phase))(images, y0)
  assert calls == [(1, 3), (2, 2), (3, 1)]  # Step s only for the examples that go that far.
  run = jax.jit(lambda x, y: family.model.apply(variables, x, y, num_iterations=phase))
  path = np.concatenate([np.asarray(y0)[None], np.asarray(run(images, y0[0]))])  # [T+1, N, K, 2]
  steps = np.repeat(np.arange(phase + 1), counts(n, phase))
  np.testing.assert_allclose(poses, path[steps, np.arange(n)], atol=1e-6)
  assert np.abs(path[phase] - path[0]).max() > 1e-4  # The path moves.


def test_ief_fixed_path_runs_the_network_each_phase_began_with():
  """FPC as the paper: phase t's path step s runs the network as phase s - 1 left it, frozen
  in the "ief_path" collection when phase s began, not the weights being trained (those only
  predict the correction); model.fixed_path="current" runs the trained weights instead."""
  config = _tiny("ief")
  config.model.fixed_path = "frozen"  # The family's default; the quickstart runs "current".
  family = families.create_family(config)
  mesh = parallel.make_mesh()
  variables = families.init_variables(family, jax.random.key(0))
  assert sorted(variables["ief_path"]) == ["step1", "step2"]  # 3 phases: 2 later ones.
  batch = _batch(config, family, mesh, helpers.dots_source(n=8, size=64))
  context = families.PhaseContext(ground_truth=(np.asarray(batch["joints"]),
                                                np.asarray(batch["visible"])), predict_train=None)
  variables = family.begin_phase(0, variables, context)
  variables = family.begin_phase(1, variables, context)
  frozen = variables["ief_path"]["step1"]
  assert set(frozen) == {"params", "batch_stats"}
  for a, b in zip(jax.tree.leaves(frozen["params"]), jax.tree.leaves(variables["params"])):
    np.testing.assert_array_equal(a, b)
    assert a is not b  # A copy: the train step donates the state's buffers.
  params, state = families.split_variables(variables)
  moved = jax.tree.map(lambda p: p + 0.05 * jnp.sign(p + 1e-3), params)  # Trained since.
  rng = jax.random.key(3)
  loss = lambda fam, p: float(jax.jit(  # noqa: E731
      lambda p: fam.loss(p, state, batch, rng, phase=1)[0])(p))

  @jax.jit
  def expected_loss(p):
    """Written out: steps 0 / 1 for the batch's two halves, step 1's pose from the frozen
    network, the correction predicted by `p`."""
    images, y0 = batch["image"], jnp.broadcast_to(state["ief"]["mean_pose"], (8, 16, 2))
    net_state = {c: v for c, v in state.items() if c != "ief_path"}
    step1 = family.model.apply({**net_state, **frozen}, images[4:], y0[4:],
                               method=ief.IEF.correction)
    y = jnp.concatenate([y0[:4], y0[4:] + step1])
    target = regression.coordinate_targets(batch, coordinate.CoordinateCodec(config.input_size))
    goal = ief.bounded_correction(y, target, regression.ief_max_step(config))
    pred, _ = families.apply_train(family.model, p, net_state, rng, images, y,
                                   method=ief.IEF.correction)
    return regression.masked_l2(pred, goal, batch["visible"])

  expected = float(expected_loss(moved))
  assert loss(family, moved) == pytest.approx(expected, rel=1e-5)
  config.model.fixed_path = "current"
  current = families.create_family(config)
  assert "ief_path" not in families.init_variables(current, jax.random.key(0))
  assert abs(loss(current, moved) - expected) > 1e-3 * expected  # Its path moved with them.
  config.model.fixed_path = "latest"
  with pytest.raises(ValueError, match="fixed_path='latest'"):
    families.create_family(config)


def test_checkpoints_evaluate_without_the_training_only_collections(tmp_path):
  """eval.py, predict.py and the exporter restore a checkpoint without the collections only
  training reads (IEF's frozen path, DeepPose's error statistics; a frozen-path checkpoint
  evaluated without its copies: test_train's frozen resume test). An IEF checkpoint saved
  before the frozen path existed (its config without model.fixed_path, which would build a
  family with copies today) still loads: `checkpoints.read_meta` fills in the "current" that
  trained it."""
  from jaxpose import checkpoints, evaluate  # pylint: disable=g-import-not-at-top
  config = _tiny("ief")
  config.model.fixed_path = "current"  # The state as it was: no "ief_path".
  family = families.create_family(config)
  mesh = parallel.make_mesh()
  state = train.create_train_state(family, train.create_optimizer(config, 100),
                                   jax.random.key(0), mesh)
  assert "ief_path" not in state.model_state
  del config.model["fixed_path"]  # The config that checkpoint stored.
  assert "ief_path" in families.init_variables(families.create_family(config), jax.random.key(0))
  manager = checkpoints.manager(tmp_path / "checkpoints", config)
  checkpoints.save(manager, state, config, 1)
  manager.wait_until_finished()
  _, loaded, variables, step = evaluate.load_checkpoint(str(tmp_path), mesh)
  assert step == 1 and loaded.train_only == ("ief_path",) and "ief_path" not in variables
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(variables["params"]),
               jax.device_get(state.params))
  deeppose = families.create_family(_tiny("deeppose"))
  assert "cascade" in families.init_variables(deeppose, jax.random.key(0))
  assert deeppose.train_only == ("cascade",)


def test_ief_takes_inception_modules_by_name():
  """The quickstart keeps five of GoogLeNet's nine Inception modules and the tiny one one per
  resolution (as ief.IEFTiny); a config without the key (the paper's, an older checkpoint's)
  builds all nine; an unknown name is an error that names it."""
  names = lambda c: [name for name, _ in families.create_family(c).model.inception]  # noqa: E731
  assert names(quickstart.get_config("ief")) == ["3a", "3b", "4a", "4e", "5a"]
  config = _tiny("ief")
  assert names(config) == ["3a", "4a", "5a"]
  del config.model["inception_modules"]
  assert names(config) == [name for name, _ in ief.INCEPTION_V1]
  config = _tiny("ief")
  assert [name for name, _ in ief.inception_modules("4a, 3a")] == ["3a", "4a"]  # Their order.
  config.model.inception_modules = ("3a", "9z")
  with pytest.raises(ValueError, match="'ief'.*9z"):
    families.create_family(config)


def test_unknown_family_is_named():
  config = _tiny("hourglass")
  config.model.name = "resnet"
  with pytest.raises(ValueError, match="'resnet'.*known"):
    families.create_family(config)
