"""Sharding: 8 simulated devices train like 1 (the segmented step too), checkpoints reshard,
2 real processes agree; bfloat16 and rematerialisation train with float32 parameters.

The device count is fixed when jax starts, so the many-device programs run in subprocesses with
`XLA_FLAGS=--xla_force_host_platform_device_count=N`; this process has one CPU device.
"""

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import optax
import pytest

from configs import quickstart
from jaxpose import checkpoints
from jaxpose import families
from jaxpose import parallel
from jaxpose import train
from jaxpose.data import datasets
from jaxpose.data import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Shared by the subprocess scripts: a tiny config, an in-memory source of random images, a
# state and the first batches. `CONFIG_JSON` is set by the caller.
_COMMON = textwrap.dedent("""
    import io, json, os, sys
    import jax  # The suite's compilation cache: conftest.py's environment.
    import numpy as np
    import optax
    import tensorflow as tf
    from PIL import Image
    from jax.sharding import Mesh
    from configs import quickstart
    from jaxpose import checkpoints, families, parallel, skeletons, train
    from jaxpose.data import pipeline
    import helpers  # tests/helpers.py (tests/ is on PYTHONPATH).

    def dots_source():
      return helpers.dots_source(n=16)

    def tiny_config():
      c = quickstart.get_config("tiny")
      c.optimizer.warmup_steps = 0
      c.batch_size = 8
      return c

    def local_batches(config, family, source, steps, process_index=0, process_count=1):
      ds = pipeline.train_dataset(
          source, input_size=family.input_size, target_fn=family.target_fn,
          augment=pipeline.Augment(), global_batch_size=config.batch_size, seed=0,
          process_index=process_index, process_count=process_count)
      it = ds.as_numpy_iterator()
      return [next(it) for _ in range(steps)]

    def run(config, family, mesh, batches, segmented=False):
      # Plain SGD: Adam would blow float-rounding noise in near-zero gradients up to +-lr.
      tx = optax.sgd(0.02)
      state = train.create_train_state(family, tx, jax.random.key(0), mesh)
      step = train.make_train_step(family, mesh, segmented=segmented)
      for i, b in enumerate(batches):
        state, _ = step(state, parallel.global_batch(b, mesh), jax.random.key(i))
      return state
""")

_EIGHT_DEVICES = _COMMON + textwrap.dedent("""
    assert jax.device_count() == 8, jax.devices()
    out = sys.argv[1]
    config = tiny_config()
    family = families.create_family(config)
    batches = local_batches(config, family, dots_source(), steps=3)
    mesh8 = parallel.make_mesh()
    mesh1 = Mesh(np.asarray(jax.devices()[:1]), (parallel.DATA_AXIS,))
    s0 = run(config, family, mesh1, [])
    np.savez(os.path.join(out, "init.npz"), *jax.tree.leaves(jax.device_get(
        {"params": s0.params, **s0.model_state})))
    s8 = run(config, family, mesh8, batches)
    s1 = run(config, family, mesh1, batches)
    assert len(jax.tree.leaves(s8.params)[0].sharding.device_set) == 8
    np.savez(os.path.join(out, "s8.npz"), *jax.tree.leaves(jax.device_get(
        {"params": s8.params, **s8.model_state})))
    # The step as a program per kind of segment (steps.SegmentedStep), on the 8 devices.
    segmented8 = run(config, family, mesh8, batches, segmented=True)
    np.savez(os.path.join(out, "segmented8.npz"), *jax.tree.leaves(jax.device_get(
        {"params": segmented8.params, **segmented8.model_state})))
    np.savez(os.path.join(out, "s1.npz"), *jax.tree.leaves(jax.device_get(
        {"params": s1.params, **s1.model_state})))

    # The checkpoint the 1-device test process wrote, restored onto 8 devices.
    tx = train.create_optimizer(config, 100)
    manager = checkpoints.manager(os.path.join(out, "ckpt1"), config)
    abstract = train.create_train_state(family, tx, jax.random.key(1), mesh8, abstract=True)
    restored = checkpoints.restore_state(manager, 3, abstract)
    assert len(jax.tree.leaves(restored.params)[0].sharding.device_set) == 8
    np.savez(os.path.join(out, "restored8.npz"), *jax.tree.leaves(jax.device_get(
        {"params": restored.params, **restored.model_state})))
    # An 8-device checkpoint for the test process to restore on 1 device.
    manager8 = checkpoints.manager(os.path.join(out, "ckpt8"), config)
    checkpoints.save(manager8, s8, config, 3)
    manager8.wait_until_finished()
""")


def _run_script(script, tmp_path, devices, *args, env=None, timeout=240):
  path = tmp_path / "script.py"
  path.write_text(script)
  env = dict(os.environ, **(env or {}),
             PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests")]),
             TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
             XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "  # conftest's, then the count.
                       f"--xla_force_host_platform_device_count={devices}")
  return subprocess.Popen([sys.executable, str(path), *map(str, args)], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(proc, timeout=240):
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, out[-5000:]
  return out


def _leaves(path):
  with np.load(path) as f:
    return [f[f"arr_{i}"] for i in range(len(f.files))]


def _tiny_config():
  c = quickstart.get_config("tiny")
  c.optimizer.warmup_steps = 0
  return c


def test_global_batch_spec_is_what_global_batch_makes():
  mesh = parallel.make_mesh()
  local = {"image": np.zeros((2, 4, 4, 3), np.uint8), "joints": np.ones((2, 16, 2), np.float32)}
  specs = parallel.global_batch_spec({k: (v.shape, v.dtype) for k, v in local.items()}, mesh)
  for k, array in parallel.global_batch(local, mesh).items():
    assert (specs[k].shape, specs[k].dtype, specs[k].sharding) == (
        array.shape, array.dtype, array.sharding), k


def test_eight_devices_match_one_and_checkpoints_reshard(tmp_path):
  # A 1-device checkpoint (this process) for the 8-device process to restore.
  config = _tiny_config()
  family = families.create_family(config)
  tx = train.create_optimizer(config, 100)
  mesh = parallel.make_mesh()
  assert mesh.devices.size == 1
  state = train.create_train_state(family, tx, jax.random.key(7), mesh)
  state = state.replace(step=3)
  manager = checkpoints.manager(tmp_path / "ckpt1", config)
  checkpoints.save(manager, state, config, 3)
  manager.wait_until_finished()
  expected1 = jax.tree.leaves(jax.device_get(
      {"params": state.params, **state.model_state}))

  _wait(_run_script(_EIGHT_DEVICES, tmp_path, 8, tmp_path))

  s8, s1 = _leaves(tmp_path / "s8.npz"), _leaves(tmp_path / "s1.npz")
  assert len(s8) == len(s1) > 10
  init = _leaves(tmp_path / "init.npz")
  diff = max(np.abs(a - b).max() for a, b in zip(s8, s1))
  moved = max(np.abs(a - b).max() for a, b in zip(s1, init))
  for a, b in zip(s8, s1):  # Parameters and the (global) BatchNorm statistics.
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=2e-3)
  assert moved > 1000 * diff  # Training moved them far more than the devices disagree.
  segmented8 = _leaves(tmp_path / "segmented8.npz")  # The segmented step: the same values.
  assert moved > 1000 * max(np.abs(a - b).max() for a, b in zip(segmented8, s8))
  for a, b in zip(_leaves(tmp_path / "restored8.npz"), expected1):
    np.testing.assert_array_equal(a, b)

  # The 8-device checkpoint restored onto this process's single device.
  manager8 = checkpoints.manager(tmp_path / "ckpt8", config, read_only=True)
  abstract = train.create_train_state(family, optax.sgd(0.02), jax.random.key(1), mesh,
                                      abstract=True)
  restored = checkpoints.restore_state(manager8, 3, abstract)
  assert int(restored.step) == 3
  got = jax.tree.leaves(jax.device_get(
      {"params": restored.params, **restored.model_state}))
  for a, b in zip(got, s8):
    np.testing.assert_array_equal(a, b)


_PROCESS = _COMMON + textwrap.dedent("""
    out, process_id, num_processes, port = sys.argv[1], *map(int, sys.argv[2:])
    if num_processes > 1:
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
      jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                                 num_processes=num_processes, process_id=process_id,
                                 initialization_timeout=120)
    assert jax.device_count() == 4 and jax.process_count() == num_processes
    config = tiny_config()
    family = families.create_family(config)
    source = dots_source()
    steps = 2
    batches = local_batches(config, family, source, steps, process_id, num_processes)
    indices = [pipeline.train_step_indices(source, step=s, global_batch_size=config.batch_size,
                                           seed=0, process_index=process_id,
                                           process_count=num_processes)
               for s in range(steps)]
    assert all(len(b["image"]) == config.batch_size // num_processes for b in batches)
    state = run(config, family, parallel.make_mesh(), batches)
    local = lambda x: np.asarray(x.addressable_shards[0].data)  # Replicated: any shard.
    leaves = jax.tree.leaves(jax.tree.map(
        local, {"params": state.params, **state.model_state}))
    np.savez(os.path.join(out, f"p{process_id}of{num_processes}.npz"), *leaves)
    # Initialised op by op (large models' way), then replicated over every process's devices.
    eager = families.run_init(family.init, jax.random.key(0), mode="eager",
                              out_shardings=parallel.replicated(parallel.make_mesh()))
    assert all(len(x.sharding.device_set) == 4 for x in jax.tree.leaves(eager))
    np.savez(os.path.join(out, f"e{process_id}of{num_processes}.npz"),
             *jax.tree.leaves(jax.tree.map(local, eager)))
    # The whole train state op by op, as the paper-sized models' is (its step a constant of the
    # initialiser, which jax.device_put refused to place across processes).
    import jaxpose.family
    jaxpose.family.EAGER_INIT_MIN_EQUATIONS = 0
    eager_state = train.create_train_state(family, optax.sgd(0.02), jax.random.key(0),
                                           parallel.make_mesh())
    assert int(local(eager_state.step)) == 0
    np.savez(os.path.join(out, f"t{process_id}of{num_processes}.npz"),
             *jax.tree.leaves(jax.tree.map(local, eager_state)))
    with open(os.path.join(out, f"p{process_id}of{num_processes}.json"), "w") as f:
      json.dump(indices, f)
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_and_read_disjoint_halves(tmp_path):
  port = _free_port()
  procs = [_run_script(_PROCESS, tmp_path, 2, tmp_path, i, 2, port) for i in range(2)]
  for p in procs:
    _wait(p)
  _wait(_run_script(_PROCESS, tmp_path, 4, tmp_path, 0, 1, 0))

  single = _leaves(tmp_path / "p0of1.npz")
  for i in range(2):
    for a, b in zip(_leaves(tmp_path / f"p{i}of2.npz"), single):
      np.testing.assert_allclose(a, b, rtol=1e-3, atol=2e-3)
    for a, b in zip(_leaves(tmp_path / f"e{i}of2.npz"), _leaves(tmp_path / "e0of1.npz")):
      np.testing.assert_array_equal(a, b)
    for a, b in zip(_leaves(tmp_path / f"t{i}of2.npz"), _leaves(tmp_path / "t0of1.npz")):
      np.testing.assert_array_equal(a, b)
  halves = [json.loads((tmp_path / f"p{i}of2.json").read_text()) for i in range(2)]
  whole = json.loads((tmp_path / "p0of1.json").read_text())
  for step, full in enumerate(whole):
    a, b = halves[0][step], halves[1][step]
    assert len(a) == len(b) == len(full) // 2
    assert a + b == full  # Process 0 reads the first half of the global batch, 1 the second.
    # Disjoint positions (indices may repeat only across epochs; a batch is within one here).
    assert not set(a) & set(b)


_LAYERS_PER_DEVICE = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jaxpose import parallel
    from jaxpose.models import fft_conv, layers, patches, winograd
    # Each device's share of every layer below in groups of images, as the paper-sized layers
    # go: Winograd's 64 px layer by its own rule, the FFT's and the patches' by smaller bounds.
    patches.MAX_GROUP_BYTES, fft_conv.MIN_ROWS = 1 << 22, 16
    mesh = parallel.make_mesh()
    assert mesh.devices.size == 2, jax.devices()
    data, rep = parallel.batch_sharded(mesh), parallel.replicated(mesh)
    seen = []
    jax.jit(parallel.tracing_on(mesh, lambda x: seen.append(parallel.data_devices()) or x))(1.0)
    parallel.per_device(lambda x: seen.append(parallel.data_devices()) or x, jnp.ones(2),
                        batched=(True,), summed=False)
    assert seen == [2, 1] and parallel.data_devices() == 1, seen
    # (x, kernel, padding, the written-out branch that layers' rules pick for them)
    cases = [((8, 64, 64, 64), (3, 3, 64, 64), 1, "winograd"),
             ((4, 32, 32, 128), (7, 7, 128, 128), 3, "fft"),
             ((4, 72, 72, 3), (9, 9, 3, 64), 4, "patches")]
    rng = np.random.default_rng(0)
    for x_shape, k_shape, padding, branch in cases:
      y_shape = (*x_shape[:3], k_shape[-1])
      assert {"winograd": layers.taps_pay(x_shape, k_shape, y_shape),
              "fft": layers.fft_pays(x_shape, k_shape, y_shape, 1, padding),
              "patches": layers.patches_pay(x_shape, k_shape, y_shape, 1)}[branch], branch
      local, k_size = (x_shape[0] // 2, *x_shape[1:]), k_shape[0]
      assert {"winograd": winograd.batch_chunks(local),
              "fft": local[0] // fft_conv.image_group(
                  local, k_size, fft_conv.tile_for(local, k_size)),
              "patches": local[0] // patches.group(local, y_shape, k_size)}[branch] > 1, branch
      x, k, w = (rng.standard_normal(s, np.float32) for s in (x_shape, k_shape, y_shape))
      k *= 0.05
      def loss(conv, x, k):
        y = conv(x, k, 1, padding)
        return jnp.sum(y * w), y
      # The reference: lax's convolution and XLA's gradients, on one device.
      (_, y_ref), g_ref = jax.value_and_grad(lambda *a: loss(layers.lax_conv2d, *a),
                                             (0, 1), has_aux=True)(x, k)
      step = jax.jit(parallel.tracing_on(mesh, jax.value_and_grad(
          lambda *a: loss(layers.conv2d, *a), (0, 1), has_aux=True)),
          in_shardings=(data, rep), out_shardings=((rep, data), (data, rep)))
      x_spec = jax.ShapeDtypeStruct(x_shape, np.float32, sharding=data)
      k_spec = jax.ShapeDtypeStruct(k_shape, np.float32, sharding=rep)
      compiled = step.lower(x_spec, k_spec).compile()
      # Each device does its own images' work: nothing is gathered, only the kernel
      # gradient and the loss are summed.
      assert "all-gather" not in compiled.as_text(), branch
      (_, y), g = compiled(jax.device_put(x, data), jax.device_put(k, rep))
      for got, want in ((y, y_ref), *zip(g, g_ref)):
        err = np.abs(np.asarray(got) - np.asarray(want)).max() / np.abs(want).max()
        assert err < 1e-4, (branch, err)
      # Lowered for a GPU or a TPU, the step has none of it: XLA's convolutions, split by XLA.
      for platform in ("cuda", "tpu"):
        text = jax.export.export(step, platforms=[platform])(x_spec, k_spec).mlir_module()
        assert "sdy.manual_computation" not in text and "fft" not in text.lower(), platform
      print(branch, "ok")
""")


def test_layers_split_their_written_out_work_over_devices(tmp_path):
  """Winograd's, the FFT's and the patches' work on a batch split over 2 devices: each device
  on its own images, with the values and gradients of lax's convolution."""
  out = _wait(_run_script(_LAYERS_PER_DEVICE, tmp_path, 2))
  assert all(f"{b} ok" in out for b in ("winograd", "fft", "patches")), out[-3000:]


_BATCH_NORM_PER_DEVICE = textwrap.dedent("""
    import re
    import jax, jax.numpy as jnp, numpy as np
    from jaxpose import parallel
    from jaxpose.models import layers
    mesh = parallel.make_mesh()
    data, rep = parallel.batch_sharded(mesh), parallel.replicated(mesh)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 8, 8, 64)).astype(np.float32)
    means = np.linspace(-10, 10, 32)
    # (spread, the first layer's running mean): the channels' means up to 10 spreads from 0,
    # the running mean's start; then up to 200 spreads, about a running mean near them.
    cases = [(1.0, np.zeros(32)), (0.05, means + 0.01 * rng.standard_normal(32))]
    for recompute in (False, True):
      block = layers.Bottleneck(64, recompute=recompute)
      for spread, running_mean in cases:
        x = (rng.standard_normal((4, 8, 8, 32)) * spread + means).astype(np.float32)
        variables = block.init(jax.random.key(0), x, train=True)
        stats = variables["batch_stats"]
        stats = {**stats, "bn1": {**stats["bn1"], "mean": jnp.asarray(running_mean, jnp.float32)}}
        def loss(params, x):
          y, state = block.apply({"params": params, "batch_stats": stats}, x, train=True,
                                 mutable=["batch_stats"])
          return jnp.sum(y * w), state
        grad = jax.grad(loss, has_aux=True)
        want = jax.jit(grad)(variables["params"], x)  # One device.
        step = jax.jit(parallel.tracing_on(mesh, grad), in_shardings=(rep, data),
                       out_shardings=rep)
        x_spec = jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=data)
        compiled = step.lower(variables["params"], x_spec).compile()
        text = compiled.as_text()
        # Each BatchNorm layer (3): one all-reduce of its statistics, stacked [2, C], one of
        # its gradients' (XLA may join the last with the weights' gradients); the partitioner
        # alone made 2 and 2, and 1 more for each written-out gradient's wait on its output
        # gradient (`layers.after`).
        reduced = re.findall(r"= (.*) all-reduce(?:-start)?\\(", text)
        stacked = re.findall(r"f32\\[2,(?:32|64)\\]", " ".join(reduced))
        assert len(reduced) <= 6 and len(stacked) == 6, reduced
        assert "all-gather" not in text
        got = compiled(variables["params"], jax.device_put(x, data))
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
          a, b = np.asarray(a), np.asarray(b)
          assert np.abs(a - b).max() <= 1e-4 * max(np.abs(b).max(), 1.0), (spread, a, b)
      print("recompute", recompute, "ok")
""")


def test_batch_norm_takes_one_all_reduce_each_way_over_devices(tmp_path):
  """Synchronised BatchNorm on a batch split over 2 devices: the statistics in one all-reduce,
  the gradients in one, with one device's values."""
  out = _wait(_run_script(_BATCH_NORM_PER_DEVICE, tmp_path, 2))
  assert "recompute False ok" in out and "recompute True ok" in out, out[-3000:]


def test_tracing_on_one_device_is_the_function_itself():
  mesh = parallel.make_mesh()
  fn = lambda x: x  # noqa: E731
  assert mesh.devices.size == 1 and parallel.tracing_on(mesh, fn) is fn


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


@pytest.mark.parametrize("option", ["mixed_precision", "remat"])
def test_bfloat16_and_remat_train_a_step_with_float32_params(option, data_dir, tmp_path, caplog):
  config = _tiny_config()
  config.dataset.data_dir = str(data_dir)
  config.num_train_steps = 1
  config.eval_batch_size = 8
  if option == "mixed_precision":
    config.mixed_precision = "bfloat16"
  else:
    config.remat = True
  with caplog.at_level(logging.WARNING):
    table = train.train_and_evaluate(config, str(tmp_path / "work"))
  assert np.isfinite(table["Total"])
  assert (tmp_path / "work" / "checkpoints" / "1").exists()
  # On CPUs, bfloat16 is slower than float32: the user is told, once, only then.
  warned = [r for r in caplog.records if r.getMessage() == train.BFLOAT16_ON_CPU]
  assert len(warned) == (1 if option == "mixed_precision" else 0)
  # The step's output state (traced, not compiled again) keeps float32 parameters.
  mesh = parallel.make_mesh()
  family = families.create_family(config)
  state = train.create_train_state(family, train.create_optimizer(config, 100),
                                   jax.random.key(0), mesh)
  source = datasets.load_source(config.dataset, config.dataset.train_split)
  batch = next(pipeline.train_dataset(
      source, input_size=family.input_size, target_fn=family.target_fn,
      augment=pipeline.Augment(), global_batch_size=config.batch_size,
      seed=0).as_numpy_iterator())
  new_state, metrics = jax.eval_shape(train.make_train_step(family, mesh), state,
                                      parallel.global_batch(batch, mesh), jax.random.key(0))
  dtypes = {x.dtype for x in jax.tree.leaves(new_state.params)}
  assert dtypes == {jax.numpy.dtype("float32")}, dtypes
  assert metrics["loss"].dtype == jax.numpy.float32
