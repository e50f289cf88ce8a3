"""Shared layers: BatchNorm as PyTorch's BatchNorm2d, PyTorch's default initialisers."""

import pathlib
import re

import flax
import flax.linen as nn
from flax import traverse_util
import jax
from jax import ad_checkpoint
from jax import export
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpose.models import hourglass
from jaxpose.models import layers

MIN_WORK_FOR_TAPS = layers.MIN_WORK_FOR_TAPS  # The library's, before the fixture below.
FFT_MIN_WORK = layers.FFT_MIN_WORK
PATCHES_MIN_WORK = layers.PATCHES_MIN_WORK


@pytest.fixture(autouse=True)
def _taps_at_any_size(monkeypatch):
  """The tests here use small shapes, below the work at which conv2d takes the tap products, the
  FFT or the patches: they take them anyway (test_taps_pay_from_the_work_a_tap and
  test_patches_pay_for_thin_large_kernels_at_stride_1 check the thresholds)."""
  monkeypatch.setattr(layers, "MIN_WORK_FOR_TAPS", 0)
  monkeypatch.setattr(layers, "FFT_MIN_WORK", 0)
  monkeypatch.setattr(layers, "PATCHES_MIN_WORK", 0)

GOLDEN = pathlib.Path(__file__).resolve().parents[1] / "golden" / "torch_reference.npz"


def _stored_batchnorm_step():
  """One BatchNorm2d training step recorded by tests/golden/make_hourglass_golden.py."""
  with np.load(GOLDEN) as f:
    return {k[3:]: f[k] for k in f.files if k.startswith("bn_")}


def _live_batchnorm_step():
  pytest.importorskip("torch")
  from golden import make_hourglass_golden  # pylint: disable=g-import-not-at-top
  return make_hourglass_golden.batchnorm_step(seed=1)


def _train_step(module, case):
  variables = {"params": {"scale": case["scale"], "bias": case["bias"]},
               "batch_stats": {"mean": case["mean0"], "var": case["var0"]}}
  y, updates = module.apply(variables, jnp.asarray(case["x"]), mutable=["batch_stats"])
  return y, updates["batch_stats"]


@pytest.mark.parametrize("source", ["stored", "live"])
def test_batchnorm_training_step_matches_pytorch(source):
  case = _stored_batchnorm_step() if source == "stored" else _live_batchnorm_step()
  y, stats = _train_step(layers.batch_norm(train=True, dtype=jnp.float32), case)
  np.testing.assert_allclose(y, case["y"], atol=1e-5, rtol=0)
  np.testing.assert_allclose(stats["mean"], case["mean1"], atol=1e-6, rtol=1e-6)
  np.testing.assert_allclose(stats["var"], case["var1"], atol=1e-6, rtol=1e-6)
  # Flax's own BatchNorm moves the running variance by the biased batch variance: off by
  # 0.1 * var / (n - 1) with n = 6 * 4 * 4 values per channel.
  _, flax_stats = _train_step(nn.BatchNorm(use_running_average=False, momentum=0.9,
                                           epsilon=1e-5), case)
  assert np.max(np.abs(flax_stats["var"] - case["var1"])) > 1e-4


def test_batchnorm_matches_flax_where_it_should():
  case = _stored_batchnorm_step()
  x = jnp.asarray(case["x"])
  flax_bn = nn.BatchNorm(momentum=0.9, epsilon=1e-5)
  variables = flax_bn.init(jax.random.key(0), x, use_running_average=True)
  ours = layers.BatchNorm(momentum=0.9, epsilon=1e-5)
  # Same variables: names, shapes, initial values.
  jax.tree.map(np.testing.assert_array_equal,
               ours.init(jax.random.key(0), x), variables)
  variables = {"params": {"scale": case["scale"], "bias": case["bias"]},
               "batch_stats": {"mean": case["mean0"], "var": case["var0"]}}
  # Eval mode: the same output, and the statistics stay as they are.
  eval_bn = ours.clone(use_running_average=True, unbiased_running_var=True)
  y, updates = eval_bn.apply(variables, x, mutable=["batch_stats"])
  np.testing.assert_allclose(
      y, flax_bn.apply(variables, x, use_running_average=True), atol=1e-5, rtol=0)
  jax.tree.map(np.testing.assert_array_equal, updates["batch_stats"], variables["batch_stats"])
  # Training mode without the unbiased option: Flax's update (normalisation is the same).
  y, stats = _train_step(ours, case)
  y_flax, flax_stats = _train_step(flax_bn.clone(use_running_average=False), case)
  np.testing.assert_allclose(y, y_flax, atol=1e-5, rtol=0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), stats, flax_stats)


def test_batchnorm_keeps_computation_dtype_and_stats_at_init():
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3)) * 3 + 2
  bn = layers.batch_norm(train=True, dtype=jnp.bfloat16)
  variables = bn.init(jax.random.key(0), x)
  np.testing.assert_array_equal(variables["batch_stats"]["mean"], np.zeros(3))
  np.testing.assert_array_equal(variables["batch_stats"]["var"], np.ones(3))
  y, _ = bn.apply(variables, x.astype(jnp.bfloat16), mutable=["batch_stats"])
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.mean(np.asarray(y, np.float32), (0, 1, 2)), 0, atol=0.02)


def test_apply_reads_parameters_without_running_their_initialisers_and_checks_shapes():
  calls = []

  def counting_init(key, shape, dtype=jnp.float32):
    calls.append(shape)
    return jax.random.normal(key, shape, dtype)

  x = jnp.ones((2, 5, 5, 3))
  conv = layers.Conv(4, 3, padding=1, kernel_init=counting_init)
  variables = conv.init(jax.random.key(0), x)
  assert calls == [(3, 3, 3, 4)]
  conv.apply(variables, x)
  jax.jit(conv.apply)(variables, x)  # flax's own check would trace counting_init again here.
  assert calls == [(3, 3, 3, 4)]
  for module, x in ((conv, x), (layers.Dense(4), x), (layers.BatchNorm(), x)):
    variables = module.init(jax.random.key(0), x)
    wrong = {"params": jax.tree.map(lambda a: jnp.zeros(a.shape + (1,)), variables["params"]),
             **{k: v for k, v in variables.items() if k != "params"}}
    names = "|".join(variables["params"])
    with pytest.raises(flax.errors.ScopeParamShapeError, match=f'parameter "({names})"'):
      module.apply(wrong, x, mutable=["batch_stats"])


def _uniform_stats_ok(values, bound):
  """U(-bound, bound): within the bound, mean 0, std bound/sqrt(3), half the mass within
  bound/2 (tolerances ~6 standard errors at the sizes used here)."""
  v = np.asarray(values).ravel()
  assert v.size >= 4000
  assert np.max(np.abs(v)) <= bound
  assert abs(np.mean(v)) < 0.05 * bound
  assert abs(np.std(v) / (bound / np.sqrt(3)) - 1) < 0.03
  assert abs(np.mean(np.abs(v) < bound / 2) - 0.5) < 0.05


def test_torch_initialisers_bounds_and_spread():
  kernel = layers.torch_kernel_init(jax.random.key(0), (3, 3, 64, 32))
  _uniform_stats_ok(kernel, 1 / np.sqrt(3 * 3 * 64))
  bias = layers.torch_bias_init(576)(jax.random.key(1), (8000,))
  _uniform_stats_ok(bias, 1 / np.sqrt(576))


def test_bottleneck_pytorch_scheme_uses_fan_in_of_each_layer():
  x = jnp.zeros((1, 4, 4, 128))
  params = layers.Bottleneck(256, init_scheme="pytorch").init(jax.random.key(0), x)["params"]
  fan_in = {"conv1": 128, "conv2": 9 * 128, "conv3": 128, "proj": 128}
  for name, n in fan_in.items():
    p = params[name]["dense"] if "dense" in params[name] else params[name]
    _uniform_stats_ok(p["kernel"], 1 / np.sqrt(n))
    assert np.max(np.abs(p["bias"])) <= 1 / np.sqrt(n) and np.std(p["bias"]) > 0
  for bn in ("bn1", "bn2", "bn3"):
    np.testing.assert_array_equal(params[bn]["scale"], 1)
    np.testing.assert_array_equal(params[bn]["bias"], 0)
  lecun = layers.Bottleneck(256, init_scheme="lecun").init(jax.random.key(0), x)["params"]
  np.testing.assert_array_equal(lecun["conv2"]["bias"], 0)
  np.testing.assert_allclose(np.std(lecun["conv2"]["kernel"]), 1 / np.sqrt(9 * 128), rtol=0.03)
  with pytest.raises(ValueError, match="init_scheme='kaiming'"):
    layers.Bottleneck(256, init_scheme="kaiming").init(jax.random.key(0), x)


def test_hourglass_defaults_to_pytorch_scheme_with_unchanged_layout():
  x = jnp.zeros((1, 8, 8, 3))
  model = hourglass.StackedHourglass(num_stacks=2, num_joints=5, features=16, depth=1)
  assert model.init_scheme == "pytorch"
  ours = model.init(jax.random.key(0), x)["params"]
  flax_default = model.clone(init_scheme="lecun").init(jax.random.key(0), x)["params"]
  assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, flax_default)
  flat = traverse_util.flatten_dict(ours, sep="/")
  checked = 0
  for path, kernel in flat.items():
    if path.endswith("kernel"):
      bound = 1 / np.sqrt(np.prod(kernel.shape[:-1]))  # fan_in: kernel area x input channels.
      bias = flat[path[:-len("kernel")] + "bias"]
      assert np.max(np.abs(kernel)) <= bound and np.max(np.abs(bias)) <= bound, path
      assert np.std(kernel) > bound / 4, path
      checked += 1
  assert checked == 48  # Every convolution and dense layer, fc_back and score_back too.
  flat = traverse_util.flatten_dict(flax_default, sep="/")
  assert not any(np.any(flat[p[:-len("kernel")] + "bias"]) for p in flat if p.endswith("kernel"))


@pytest.mark.parametrize("kernel,stride,padding,size,channels,batch", [
    (3, 1, 1, 9, 16, 2),  # 3x3, stride 1, padding 1: Winograd's kernel gradient (WINOGRAD).
    (7, 2, 3, 17, 16, 2), (3, 1, 0, 8, 24, 2), (11, 4, 0, 35, 16, 2),
    (3, 1, 1, 9, 16, 1),  # 81 output pixels: not TAP_PRODUCT_PARTS halves, one product a tap.
    (7, 1, 3, 13, 16, 2),  # 7x7, stride 1, "same": both gradients by the FFT (FFT).
    (5, 1, 2, 12, 3, 2),  # 3 channels, 5x5 at stride 1: the patches' product (PATCHES).
    (7, 2, 3, 17, 3, 2)])  # The last: below MIN_CHANNELS_FOR_TAPS, XLA's own gradient.
def test_conv_equals_flax_conv_with_its_own_kernel_gradient(kernel, stride, padding, size,
                                                            channels, batch):
  assert (channels >= layers.MIN_CHANNELS_FOR_TAPS) == (channels > 3)
  x = jax.random.normal(jax.random.key(0), (batch, size, size, channels))
  ours = layers.Conv(4, kernel, strides=stride, padding=padding)
  flax_conv = nn.Conv(4, (kernel, kernel), strides=stride, padding=padding)
  variables = ours.init(jax.random.key(1), x)
  jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), variables,
               flax_conv.init(jax.random.key(1), x))
  # The FFT's value (the 7x7 "same" case) rounds to ~5e-7 of its largest (`fft_conv`'s docstring).
  want = flax_conv.apply(variables, x)
  np.testing.assert_allclose(ours.apply(variables, x), want,
                             atol=1e-6 * max(1.0, float(np.max(np.abs(want)))), rtol=0)

  def grads(module):
    return jax.grad(lambda v, x: jnp.sum(jnp.sin(module.apply(v, x))), argnums=(0, 1))(
        variables, x)

  # Winograd's kernel gradient is right to ~1e-5 of its largest value (`winograd`'s docstring),
  # the FFT's gradients likewise (`fft_conv`'s).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, atol=2e-5 * max(1.0, float(np.max(np.abs(b)))), rtol=1e-5),
               grads(ours), grads(flax_conv))
  bf16 = layers.Conv(4, kernel, strides=stride, padding=padding, dtype=jnp.bfloat16)
  g = jax.grad(lambda v: jnp.sum(bf16.apply(v, x).astype(jnp.float32)))(variables)
  assert g["params"]["kernel"].dtype == jnp.float32


def test_taps_pay_from_the_work_a_tap(monkeypatch):
  """conv2d's kernel gradient is written out from MIN_WORK_FOR_TAPS multiply-adds a tap
  (N*H'*W'*Cin*Cout) and MIN_CHANNELS_FOR_TAPS input channels, XLA's own below either: in the
  CPU program exactly then, Winograd's 36 products for a 3x3 kernel at stride 1 and padding 1,
  the FFT for a 7x7 one with "same" padding from FFT_MIN_WORK (and at most FFT_MAX_WIDENING
  times its input's channels out), the taps' loop for other kernels (and for those with
  WINOGRAD and FFT off)."""
  monkeypatch.setattr(layers, "MIN_WORK_FOR_TAPS", MIN_WORK_FOR_TAPS)
  monkeypatch.setattr(layers, "FFT_MIN_WORK", FFT_MIN_WORK)
  big = ((8, 64, 64, 128), (3, 3, 128, 128), (8, 64, 64, 128))  # The hourglass's 3x3: 5.4e8.
  small = ((8, 4, 4, 128), (3, 3, 128, 128), (8, 4, 4, 128))  # Its 4 px level: 2.1e6.
  edge = ((1, 64, 64, 64), (3, 3, 64, 64), (1, 64, 64, 64))  # 2^24 exactly.
  thin = ((8, 256, 256, 3), (7, 7, 3, 64), (8, 128, 128, 64))  # The stem: 3 channels.
  assert layers.taps_pay(*big) and layers.taps_pay(*edge)
  assert not layers.taps_pay(*small) and not layers.taps_pay(*thin)
  five = ((1, 64, 64, 64), (5, 5, 64, 64), (1, 64, 64, 64))  # 2^24 exactly, a 5x5 kernel.
  seven = ((4, 64, 64, 64), (7, 7, 64, 64), (4, 64, 64, 64))  # FFT_MIN_KERNEL, 2^26 a tap.
  seven_less = ((1, 64, 64, 64), (7, 7, 64, 64), (1, 64, 64, 64))  # 2^24: the taps still.
  seven_small = ((1, 32, 32, 64), (7, 7, 64, 64), (1, 32, 32, 64))  # 2^22: XLA's.
  four = ((4, 32, 32, 64), (7, 7, 64, 256), (4, 32, 32, 256))  # 4x out (Tompson's 9x9): the FFT.
  widening = ((4, 32, 32, 64), (7, 7, 64, 320), (4, 32, 32, 320))  # 5x the channels out.
  for shapes, on, kind in ((small, True, "xla"), (edge, True, "winograd"),
                           (edge, False, "taps"), (five, True, "taps"), (seven, True, "fft"),
                           (seven, False, "taps"), (seven_less, True, "taps"),
                           (seven_small, True, "xla"), (four, True, "fft"),
                           (widening, True, "taps")):
    monkeypatch.setattr(layers, "WINOGRAD", on)
    monkeypatch.setattr(layers, "FFT", on)
    x, kernel = jnp.zeros(shapes[0]), jnp.zeros(shapes[1])
    padding = shapes[1][0] // 2
    loss = lambda x, kernel: jnp.sum(jnp.sin(layers.conv2d(x, kernel, 1, padding)))  # noqa: E731
    assert _kernel_gradient_kind(_gradient_program("cpu", loss, x, kernel)) == kind, shapes


def test_patches_pay_for_thin_large_kernels_at_stride_1(monkeypatch):
  """The patches' product from PATCHES_MIN_WORK multiply-adds (N*H'*W' * k*k*Cin * Cout), for
  inputs below MIN_CHANNELS_FOR_TAPS, kernels from PATCHES_MIN_KERNEL, stride 1 only."""
  monkeypatch.setattr(layers, "PATCHES_MIN_WORK", PATCHES_MIN_WORK)
  cpm = ((8, 368, 368, 3), (9, 9, 3, 128), (8, 368, 368, 128))  # CPM's first layer: 3.4e10.
  tompson = ((8, 64, 64, 3), (5, 5, 3, 128), (8, 64, 64, 128))  # Tompson's smallest bank: 3.1e8.
  quickstart = ((8, 128, 128, 3), (5, 5, 3, 16), (8, 128, 128, 16))  # 1.6e8: XLA's.
  three = ((8, 368, 368, 3), (3, 3, 3, 64), (8, 368, 368, 64))  # 3x3: XLA's.
  wide = ((8, 368, 368, 16), (9, 9, 16, 128), (8, 368, 368, 128))  # The taps' width: theirs.
  assert layers.patches_pay(*cpm, 1) and layers.patches_pay(*tompson, 1)
  assert not layers.patches_pay(*cpm, 2)  # The strided stems: XLA's (measured no faster).
  for shapes in (quickstart, three, wide):
    assert not layers.patches_pay(*shapes, 1), shapes
  monkeypatch.setattr(layers, "PATCHES", False)
  assert not layers.patches_pay(*cpm, 1)


@pytest.mark.parametrize("platform", ["cpu", "cuda", "tpu"])
def test_thin_inputs_kernel_gradient_is_the_patches_product_on_cpus_only(platform):
  """CPM's first layer (9x9 on the 368 px image, 3 -> 128 channels): in a program lowered for
  CPUs its kernel gradient is one product of 243 patch values by 128 output channels (two
  groups of images at a time, a loop), its value and input gradient convolutions; XLA's own
  (a third convolution) on a GPU or TPU."""
  x, kernel = jnp.zeros((8, 368, 368, 3)), jnp.zeros((9, 9, 3, 128))
  loss = lambda x, kernel: jnp.sum(jnp.sin(layers.conv2d(x, kernel, 1, 4)))  # noqa: E731
  program = _gradient_program(platform, loss, x, kernel)
  cpu = platform == "cpu"
  product = re.search(r"stablehlo\.dot_general.*-> tensor<243x128xf32>", program)
  assert (product is not None) == cpu
  assert ("stablehlo.while" in program) == cpu
  assert program.count("stablehlo.convolution") == (2 if cpu else 3)


def _kernel_gradient_kind(program: str) -> str:
  """Which kernel gradient a gradient program of one convolution holds: "taps" (their loop),
  "winograd" (its 36 products, one batched dot_general), "fft" (transforms) or "xla" (a second
  convolution)."""
  batched_36 = re.search(r"stablehlo\.dot_general.*batching_dims = \[0\] x \[0\].*"
                         r"-> tensor<36x", program)
  kinds = {"taps": "stablehlo.while" in program, "winograd": batched_36 is not None,
           "fft": "stablehlo.fft" in program,
           "xla": program.count("stablehlo.convolution") == 3}
  assert sum(kinds.values()) == 1, kinds
  return next(kind for kind, found in kinds.items() if found)


def _gradient_program(platform: str, fn, *args) -> str:
  """The StableHLO of jax.grad(fn) lowered for `platform` (no such device needed)."""
  grad = jax.jit(jax.grad(fn, argnums=tuple(range(len(args)))))
  return export.export(grad, platforms=[platform])(*args).mlir_module()


@pytest.mark.parametrize("platform", ["cpu", "cuda", "tpu"])
@pytest.mark.parametrize("stride", [1, 2])
def test_written_out_gradients_are_lowered_for_cpus_only(platform, stride):
  """conv2d's written-out kernel gradients (Winograd's for a 3x3 kernel at stride 1 and
  padding 1, else the tap products' loop) and dense's materialised operands (an optimisation
  barrier) were measured faster on CPUs only: a program lowered for a GPU or TPU holds XLA's
  own gradients instead (a third convolution, no loop, no barrier), for the layers alone and
  inside bn_relu_conv's recomputing gradient."""
  keys = jax.random.split(jax.random.key(5), 3)
  x = jax.random.normal(keys[0], (2, 9, 9, 16))
  kernel = jax.random.normal(keys[1], (3, 3, 16, 16))
  dense_kernel = jax.random.normal(keys[2], (16, 4))

  def layer_loss(x, kernel, dense_kernel):
    return jnp.sum(jnp.sin(layers.dense(layers.conv2d(x, kernel, stride, 1), dense_kernel)))

  def fused_loss(x, kernel, dense_kernel):
    mean, var = jnp.mean(x, (0, 1, 2)), jnp.var(x, (0, 1, 2))
    one, zero = jnp.ones(16), jnp.zeros(16)
    y = layers.bn_relu_conv(x, mean, var, one, zero, kernel, 1e-5, (stride, 1))
    return jnp.sum(jnp.sin(layers.bn_relu_conv(y, jnp.mean(y, (0, 1, 2)), jnp.var(y, (0, 1, 2)),
                                               one, zero, dense_kernel, 1e-5, None)))

  cpu = platform == "cpu"
  for fn in (layer_loss, fused_loss):
    program = _gradient_program(platform, fn, x, kernel, dense_kernel)
    expected = "xla" if not cpu else "winograd" if stride == 1 else "taps"
    assert _kernel_gradient_kind(program) == expected, fn.__name__
    assert ("optimization_barrier" in program) == cpu, fn.__name__


@pytest.mark.parametrize("platform", ["cpu", "cuda", "tpu"])
def test_large_kernels_value_in_inference_is_the_one_training_computes(platform):
  """Without differentiation (inference: the predictions) a 7x7 layer at stride 1 with "same"
  padding is the FFT's on CPUs, the value its training step computes, to the bit; lax's
  convolution on a GPU or TPU. Either is lax's value to rounding."""
  x = jax.random.normal(jax.random.key(0), (2, 12, 12, 16))
  kernel = jax.random.normal(jax.random.key(1), (7, 7, 16, 8)) * 0.05
  infer = jax.jit(lambda x, kernel: layers.conv2d(x, kernel, 1, 3))
  program = export.export(infer, platforms=[platform])(x, kernel).mlir_module()
  cpu = platform == "cpu"
  assert ("stablehlo.fft" in program) == cpu
  assert program.count("stablehlo.convolution") == (0 if cpu else 1)
  if cpu:
    trained, _ = jax.jit(lambda x, kernel: jax.vjp(
        lambda x, kernel: layers.conv2d(x, kernel, 1, 3), x, kernel))(x, kernel)
    np.testing.assert_array_equal(infer(x, kernel), trained)
    want = layers.lax_conv2d(x, kernel, 1, 3)
    np.testing.assert_allclose(infer(x, kernel), want, atol=2e-6 * float(jnp.abs(want).max()))


@pytest.mark.parametrize("platform", ["cpu", "cuda", "tpu"])
def test_large_kernels_gradients_are_by_the_fft_on_cpus_only(platform):
  """A 7x7 convolution at stride 1 with "same" padding: its value and both gradients by the FFT
  in a program lowered for CPUs (no convolution left), XLA's own on a GPU or TPU."""
  x, kernel = jnp.zeros((2, 12, 12, 16)), jnp.zeros((7, 7, 16, 8))
  loss = lambda x, kernel: jnp.sum(jnp.sin(layers.conv2d(x, kernel, 1, 3)))  # noqa: E731
  program = _gradient_program(platform, loss, x, kernel)
  cpu = platform == "cpu"
  assert _kernel_gradient_kind(program) == ("fft" if cpu else "xla")
  assert program.count("stablehlo.convolution") == (0 if cpu else 3)


def test_gradients_for_other_platforms_equal_the_cpu_ones():
  """The gradients a GPU or TPU program computes (XLA's, run here on the CPU) equal the
  written-out ones, for convolutions on both sides of MIN_CHANNELS_FOR_TAPS, Winograd's (to
  ~1e-5 of the largest value) and for dense."""
  keys = jax.random.split(jax.random.key(6), 6)
  for channels, stride, padding in ((16, 1, 1), (24, 2, 0)):
    x = jax.random.normal(keys[0], (2, 11, 11, channels))
    kernel = jax.random.normal(keys[1], (3, 3, channels, 8))
    dy = jax.random.normal(keys[2], layers.conv2d(x, kernel, stride, padding).shape)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5),
                 layers._conv2d_bwd_taps(stride, padding, x, kernel, dy),
                 layers._conv2d_bwd_xla(stride, padding, x, kernel, dy))
  x = jax.random.normal(keys[0], (2, 11, 11, 16))  # 11 px: three 4x4 tiles, the last cut.
  kernel = jax.random.normal(keys[1], (3, 3, 16, 8))
  dy = jax.random.normal(keys[2], (2, 11, 11, 8))
  (dx, dk), (xla_dx, xla_dk) = (layers._conv2d_bwd_winograd(x, kernel, dy),
                                layers._conv2d_bwd_xla(1, 1, x, kernel, dy))
  np.testing.assert_array_equal(dx, xla_dx)  # The input gradient is XLA's.
  np.testing.assert_allclose(dk, xla_dk, atol=2e-5 * np.max(np.abs(xla_dk)), rtol=0)
  x, kernel = jax.random.normal(keys[3], (2, 5, 5, 12)), jax.random.normal(keys[4], (12, 7))
  dy = jax.random.normal(keys[5], (2, 5, 5, 7))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
               layers._dense_bwd_cpu(x, kernel, dy), layers._dense_bwd_xla(x, kernel, dy))


def test_batchnorm_gradient_is_the_statistics_chain_rule():
  x = jax.random.normal(jax.random.key(0), (4, 6, 6, 5)) * 3 + 1
  params = {"scale": jnp.linspace(0.5, 2.0, 5), "bias": jnp.linspace(-1.0, 1.0, 5)}
  bn = layers.batch_norm(train=True, dtype=jnp.float32)
  stats = bn.init(jax.random.key(0), x)["batch_stats"]

  def ours(p, x):
    y, _ = bn.apply({"params": p, "batch_stats": stats}, x, mutable=["batch_stats"])
    return jnp.sum(jnp.sin(y) * jnp.arange(5.0))

  def plain(p, x):  # Autodiff through the two-pass statistics.
    mean = jnp.mean(x, (0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), (0, 1, 2))
    y = (x - mean) / jnp.sqrt(var + 1e-5) * p["scale"] + p["bias"]
    return jnp.sum(jnp.sin(y) * jnp.arange(5.0))

  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5),
               jax.grad(ours, argnums=(0, 1))(params, x),
               jax.grad(plain, argnums=(0, 1))(params, x))


def test_batchnorm_statistics_keep_nothing_for_the_backward_pass(capsys):
  """The statistics get zero cotangents (the normalisation's gradient holds their part), so
  autodiff keeps none of their intermediates: x - mean was kept, and its gradient work done,
  for nothing (the 8-stack hourglass's train step 15.1 -> 12.0 s)."""
  x = jax.random.normal(jax.random.key(0), (4, 6, 6, 5))
  bn = layers.batch_norm(train=True, dtype=jnp.float32)
  variables = bn.init(jax.random.key(0), x)

  def loss(x):
    y, _ = bn.apply(variables, x, mutable=["batch_stats"])
    return jnp.sum(jnp.sin(y))

  ad_checkpoint.print_saved_residuals(loss, x)
  saved = capsys.readouterr().out.splitlines()
  statistics = [line for line in saved if "(batch_moments)" in line]
  assert statistics and all(line.startswith("f32[5] ") for line in statistics), saved
  assert sum(line.startswith("f32[4,6,6,5] ") for line in saved) == 2, saved  # x, cos(y).


def test_gradient_keeps_about_two_activations_a_layer():
  """BatchNorm's and the convolution's backward work on their residuals waits for the output
  gradient (`layers.after`): a chain of BN-ReLU-conv layers keeps x and the conv's input per
  layer, where XLA, scheduling that work in the forward pass, held ~3.8 activations a layer
  (13.5 against 30.4 for this chain of 8)."""

  class Chain(nn.Module):
    @nn.compact
    def __call__(self, x):
      for i in range(8):
        x = layers.Conv(32, 3, padding=1, name=f"conv{i}")(
            nn.relu(layers.batch_norm(True, jnp.float32, name=f"bn{i}")(x)))
      return x

  x = jnp.ones((4, 16, 16, 32))
  variables = Chain().init(jax.random.key(0), x)

  def loss(params):
    y, _ = Chain().apply({**variables, "params": params}, x, mutable=["batch_stats"])
    return jnp.sum(jnp.sin(y))

  analysis = jax.jit(jax.grad(loss)).lower(variables["params"]).compile().memory_analysis()
  assert analysis.temp_size_in_bytes <= 8 * 2.5 * x.nbytes


@pytest.mark.parametrize("channels,geometry", [(5, None), (20, None), (5, (1, 1)), (20, (2, 1))])
def test_fused_bn_relu_conv_gradient_is_the_plain_chain_rule(channels, geometry):
  """bn_relu_conv keeps only x and recomputes the rest: its gradients equal autodiff through
  batch statistics, ReLU and the product (dense 1x1, or a 3x3 conv on both sides of
  MIN_CHANNELS_FOR_TAPS), and the ReLU's zeros pass no gradient."""
  keys = jax.random.split(jax.random.key(2), 3)
  x = jax.random.normal(keys[0], (3, 8, 8, channels)) * 2 + 0.5
  scale, bias = jnp.linspace(0.5, 1.5, channels), jnp.linspace(-0.5, 0.5, channels)
  kshape = (channels, 7) if geometry is None else (3, 3, channels, 7)
  kernel = jax.random.normal(keys[1], kshape) * 0.3
  weights = jax.random.normal(keys[2], (7,))

  def product(y, k):
    if geometry is None:
      return jnp.dot(y, k)
    s, p = geometry
    return jax.lax.conv_general_dilated(y, k, (s, s), [(p, p)] * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def plain(x, scale, bias, kernel):
    mean = jnp.mean(x, (0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), (0, 1, 2))
    y = nn.relu((x - mean) / jnp.sqrt(var + 1e-5) * scale + bias)
    return jnp.sum(jnp.sin(product(y, kernel)) * weights)

  def fused(x, scale, bias, kernel):
    mean = jnp.mean(x, (0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), (0, 1, 2))
    out = layers.bn_relu_conv(x, mean, var, scale, bias, kernel, 1e-5, geometry)
    return jnp.sum(jnp.sin(out) * weights)

  args = (x, scale, bias, kernel)
  np.testing.assert_allclose(fused(*args), plain(*args), rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4),
               jax.grad(fused, argnums=(0, 1, 2, 3))(*args),
               jax.grad(plain, argnums=(0, 1, 2, 3))(*args))


def test_bottleneck_trains_as_the_unfused_layers():
  """The training pass through the fused units: same outputs, batch statistics and gradients
  as BN, ReLU and convolution applied one after another (the inference path)."""
  x = jax.random.normal(jax.random.key(3), (2, 8, 8, 24))
  block = layers.Bottleneck(32, recompute=True)
  variables = block.init(jax.random.key(4), x)

  class Unfused(nn.Module):  # The same parameters, layer by layer.
    @nn.compact
    def __call__(self, x):
      bn = lambda name: layers.batch_norm(True, jnp.float32, name=name)
      y = layers.Conv1x1(16, name="conv1")(nn.relu(bn("bn1")(x)))
      y = layers.Conv(16, 3, padding=1, name="conv2")(nn.relu(bn("bn2")(y)))
      y = layers.Conv1x1(32, name="conv3")(nn.relu(bn("bn3")(y)))
      return layers.Conv1x1(32, name="proj")(x) + y

  def loss(module, kwargs):
    def f(params):
      y, updates = module.apply({**variables, "params": params}, x, mutable=["batch_stats"],
                                **kwargs)
      return jnp.sum(jnp.sin(y)), updates
    return jax.value_and_grad(f, has_aux=True)(variables["params"])

  (v1, stats1), g1 = loss(block, {"train": True})
  (v2, stats2), g2 = loss(Unfused(), {})
  np.testing.assert_allclose(v1, v2, rtol=1e-5)
  for a, b in ((stats1, stats2), (g1, g2)):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4), a, b)


@pytest.mark.parametrize("window,stride,padding,size", [
    (3, 1, ((1, 1), (1, 1)), 9),  # Inception's pool branch (IEF).
    (3, 2, ((0, 1), (0, 0)), 10),  # Caffe's ceil rounding on one edge.
    (2, 2, ((0, 0), (0, 0)), 8)])
def test_max_pool_of_slices_equals_reduce_window_values_and_gradient(window, stride, padding,
                                                                     size):
  x = jax.random.normal(jax.random.key(0), (2, size, size + 1, 3))  # Distinct values: no ties.
  ours = lambda y: layers.max_pool(y, window, stride, padding)  # noqa: E731
  theirs = lambda y: nn.max_pool(y, (window, window), (stride, stride), padding)  # noqa: E731
  np.testing.assert_array_equal(ours(x), theirs(x))
  weights = jax.random.normal(jax.random.key(1), ours(x).shape)
  np.testing.assert_allclose(jax.grad(lambda y: jnp.sum(ours(y) * weights))(x),
                             jax.grad(lambda y: jnp.sum(theirs(y) * weights))(x), atol=1e-6)


@pytest.mark.parametrize("window,stride,padding", [(3, 1, ((1, 1), (1, 1))),
                                                   (3, 2, ((0, 1), (0, 1)))])
def test_max_pool_gives_each_windows_gradient_to_its_first_maximum_on_ties(window, stride,
                                                                           padding):
  # Values from {0, 1, 2}: most windows hold their maximum more than once. The written-out
  # gradient gives each window's to one element: the maximum in the first column that holds
  # it, the first row in that column (a loop over the windows, here).
  x = jax.random.randint(jax.random.key(0), (2, 9, 8, 3), 0, 3).astype(jnp.float32)
  dy = jax.random.normal(jax.random.key(1), layers.max_pool(x, window, stride, padding).shape)
  grad = jax.grad(lambda y: jnp.sum(layers.max_pool(y, window, stride, padding) * dy))(x)
  (top, _), (left, _) = padding
  xp = np.pad(np.asarray(x), ((0, 0), *padding, (0, 0)), constant_values=-np.inf)
  expected = np.zeros(xp.shape, np.float32)
  for n, oy, ox, c in np.ndindex(*dy.shape):
    patch = xp[n, oy * stride:oy * stride + window, ox * stride:ox * stride + window, c]
    i, j = next((i, j) for j in range(window) for i in range(window)
                if patch[i, j] == patch.max())
    expected[n, oy * stride + i, ox * stride + j, c] += dy[n, oy, ox, c]
  expected = expected[:, top:top + x.shape[1], left:left + x.shape[2]]
  np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("platform", ["cpu", "cuda", "tpu"])
def test_max_pool_gradient_is_written_out_for_cpus_only(platform):
  """Lowered for a GPU or TPU, a 3x3 pool's gradient is autodiff's (ties shared: divisions),
  as before the written-out one, which was measured on CPUs only; on CPUs, no division. On
  distinct values the two gradients are equal."""
  same = ((1, 1), (1, 1))
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  program = _gradient_program(platform, lambda x: jnp.sum(jnp.sin(
      layers.max_pool(x, 3, 1, same))), x)
  assert ("stablehlo.divide" in program) == (platform != "cpu")
  y = layers.max_pool(x, 3, 1, same)
  # pylint: disable=protected-access
  np.testing.assert_allclose(layers._max_pool_bwd_cpu(3, 1, same, x, y, jnp.cos(y)),
                             layers._max_pool_bwd_autodiff(3, 1, same, x, y, jnp.cos(y)),
                             atol=1e-6)
