"""The train step as a program per kind of segment (steps.SegmentedStep, config.segmented_step):
train_step's values, alike segments compiled once, clear refusals, a bit-exact resume."""

import collections
import dataclasses
import shutil
import warnings

import jax
import numpy as np
import optax
import pytest

import helpers
from benchmarks import models
from configs import quickstart
from jaxpose import checkpoints
from jaxpose import families
from jaxpose import host_memory
from jaxpose import parallel
from jaxpose import steps
from jaxpose import train


def _three_stacks():
  config = quickstart.get_config("tiny")
  config.model.num_stacks = 3
  family, mesh = families.create_family(config), parallel.make_mesh()
  n, size = config.batch_size, config.input_size
  rng = np.random.default_rng(0)
  batch = parallel.global_batch(
      {"image": rng.uniform(-0.5, 0.5, (n, size, size, 3)).astype(np.float32),
       "joints": rng.uniform(8, size - 8, (n, 16, 2)).astype(np.float32),
       "visible": (rng.uniform(size=(n, 16)) > 0.2).astype(np.float32)}, mesh)
  return config, family, mesh, batch


def test_each_kind_of_segment_is_traced_once_to_compile_its_programs():
  """`SegmentedStep.trace` (what `compile_ahead` compiles) takes the residuals' shapes and the
  forward program from one trace of each kind's segment, not two."""
  _, family, mesh, batch = _three_stacks()
  traces = collections.Counter()

  def counted(segment):
    def apply(*args, **kwargs):
      traces[segment.kind] += 1
      return segment.apply(*args, **kwargs)
    return dataclasses.replace(segment, apply=apply)

  family = dataclasses.replace(family, segments=dataclasses.replace(
      family.segments, segments=tuple(map(counted, family.segments.segments))))
  step = steps.make_train_step(family, mesh, segmented=True)
  abstract = steps.create_train_state(family, optax.sgd(0.1), jax.random.key(0), mesh,
                                      abstract=True)
  plan = step.trace(abstract, batch, jax.random.key(1))
  assert traces == {"stem": 1, "stack": 1, "last": 1}
  assert [name for name, *_ in plan].count("forward stack") == 1


def test_the_segmented_step_is_train_step_with_a_program_per_kind_of_segment():
  """Two steps of a 3-stack hourglass, jitted and compiled ahead (`steps.compile_ahead`), land
  where `train_step` as one program lands, to float rounding (measured 1.8e-7 of the largest
  value; SGD, as Adam would blow the rounding of near-zero gradients up to its step size), with
  the same metrics. stack0 and stack1 share their programs: 12 in all. From the second step on,
  each forward program writes its residuals over the buffers the step before kept."""
  _, family, mesh, batch = _three_stacks()
  tx = optax.sgd(0.02)
  segmented = steps.make_train_step(family, mesh, segmented=True)
  abstract = steps.create_train_state(family, tx, jax.random.key(0), mesh, abstract=True)
  laps = {}
  ahead = steps.compile_ahead(segmented, abstract, batch, jax.random.key(1), laps=laps).result()
  assert sorted(ahead.compiled) == sorted(segmented.jitted) == [
      "backward last", "backward stack", "backward stem", "forward last", "forward stack",
      "forward stem", "metrics", "prepare", "reserve last", "reserve stack", "reserve stem",
      "update"]
  assert all(isinstance(p, jax.stages.Compiled) for p in steps.step_programs(ahead))
  assert set(laps) >= {"trace", "forward stack", "update"}
  # The forward's residuals that are its own inputs (parameters, input) are not copied out.
  forward = next(traced for name, _, _, traced in segmented.trace(
      abstract, batch, jax.random.key(1)) if name == "forward stack")
  marked = jax.tree.leaves(forward.out_info[3], is_leaf=lambda x: isinstance(x, steps._Input))
  assert sum(isinstance(x, steps._Input) for x in marked) > 10
  one = steps.make_train_step(family, mesh, update_apart=False)
  ends, buffers, trims = {}, {}, []
  for name, step in (("jitted", segmented), ("ahead", ahead), ("one", one)):
    state = steps.create_train_state(family, tx, jax.random.key(0), mesh)
    for i in range(2):
      trims.append(host_memory.stats()["trims"])
      state, metrics = step(state, batch, jax.random.key(i))
      trims[-1] = host_memory.stats()["trims"] - trims[-1]
      if name != "one":
        buffers.setdefault(name, []).append(
            {x.unsafe_buffer_pointer() for kept in step._kept.values() for x in kept})
    ends[name] = state, jax.device_get(metrics)
  assert segmented.jitted["forward stack"]._cache_size() == 1  # stack0 and stack1 alike.
  assert trims[3] == 1  # On a CPU, before each segmented step (the ahead one compiles none).
  for first, second in buffers.values():  # All but those a forward's output and loss took.
    assert len(first) > 100 and len(first - second) <= 2 * len(family.segments.segments)
  want, want_metrics = ends["one"]
  assert float(want_metrics["loss"]) > 0
  for name in ("jitted", "ahead"):
    got, got_metrics = ends[name]
    assert int(got.step) == 2
    assert models.relative_difference((got.params, got.model_state),
                                (want.params, want.model_state)) < 1e-5
    assert sorted(got_metrics) == sorted(want_metrics) == [
        "grad_norm", "loss", "loss_stack0", "loss_stack1", "loss_stack2"]
    for k, v in want_metrics.items():
      np.testing.assert_allclose(got_metrics[k], v, rtol=1e-5)
  # Training moved the parameters far more than the two ways disagree.
  start = steps.create_train_state(family, tx, jax.random.key(0), mesh)
  assert models.relative_difference(start.params, want.params) > 1e-3


def test_a_family_without_segments_or_a_parameter_left_out_is_refused():
  config = quickstart.get_config("cpm-tiny")
  family, mesh = families.create_family(config), parallel.make_mesh()
  with pytest.raises(ValueError, match="'cpm' family declares no segments"):
    steps.make_train_step(family, mesh, segmented=True)
  config, family, mesh, batch = _three_stacks()
  cut = dataclasses.replace(family.segments, segments=family.segments.segments[:-1])
  step = steps.make_train_step(dataclasses.replace(family, segments=cut), mesh, segmented=True)
  tx = optax.sgd(0.02)
  state = steps.create_train_state(family, tx, jax.random.key(0), mesh)
  with pytest.raises(ValueError, match=r"missing \['stack2'\]"):
    step(state, batch, jax.random.key(1))


def test_a_batch_of_another_shape_gets_buffers_of_its_own():
  """The residuals' buffers a step keeps are for its batch's shapes: a smaller batch after it
  (the end of a split, say) gets new ones instead of the kept ones donated to its programs.
  train.py lets go of them before an evaluation; the next step makes them again."""
  _, family, mesh, batch = _three_stacks()
  segmented = steps.make_train_step(family, mesh, segmented=True)
  state = steps.create_train_state(family, optax.sgd(0.02), jax.random.key(0), mesh)
  state, _ = segmented(state, batch, jax.random.key(0))
  shapes = lambda: [x.shape for i in sorted(segmented._kept) for x in segmented._kept[i]]
  kept = shapes()
  half, before = jax.tree.map(lambda x: x[: x.shape[0] // 2], batch), jax.device_get(state.params)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # E.g. "Some donated buffers were not usable".
    new, metrics = segmented(state, half, jax.random.key(1))
  assert shapes() != kept
  assert np.isfinite(metrics["loss"]) and int(new.step) == 2
  assert models.relative_difference(new.params, before) > 1e-6
  train._release(segmented)  # As train.py does before an evaluation: none kept, then new ones.
  assert not segmented._kept
  new, _ = segmented(new, half, jax.random.key(2))
  assert shapes() and int(new.step) == 3


def test_a_segmented_run_resumes_bit_exact(tmp_path):
  """train.py with config.segmented_step: a run stopped after step 2 and resumed ends at step
  3 where the uninterrupted run ends, to the bit (parameters, optimiser state, statistics)."""
  def config():
    c = helpers.tiny_config(tmp_path / "tfds", segmented_step=True, num_train_steps=3,
                            checkpoint_every_steps=2, eval_every_steps=1000)
    c.model.num_stacks = 2
    c.keep_checkpoints = 5
    return c

  train.train_and_evaluate(config(), str(tmp_path / "full"))
  split = tmp_path / "split" / "checkpoints"
  shutil.copytree(tmp_path / "full", tmp_path / "split")
  shutil.rmtree(split / "3")
  train.train_and_evaluate(config(), str(tmp_path / "split"))
  family, mesh = families.create_family(config()), parallel.make_mesh()
  abstract = train.create_train_state(family, train.create_optimizer(config(), 100),
                                      jax.random.key(0), mesh, abstract=True)
  ends = [checkpoints.restore_state(checkpoints.manager(path, config(), read_only=True), 3,
                                    abstract) for path in (tmp_path / "full" / "checkpoints",
                                                           split)]
  jax.tree.map(np.testing.assert_array_equal, *jax.device_get(ends))
  assert int(ends[0].step) == 3
