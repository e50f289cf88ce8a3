"""DeepPose: paper-sized counts (eval_shape), LRN, on-device crops, the cascade's wiring."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from jaxpose.models import deeppose
from jaxpose.models import layers


@pytest.mark.parametrize("joints,params", [(14, 58_396_060), (16, 58_412_448), (7, 58_338_702)])
def test_paper_parameter_counts_at_220(joints, params):
  model = deeppose.DeepPoseNet(joints)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 220, 220, 3))))
  assert helpers.count(variables) == params
  p = variables["params"]
  assert p["conv2"]["kernel"].shape == (5, 5, 96, 256)  # Ungrouped.
  # 220 -> 53 -> 26 -> 13 -> 6 with ceil-rounded pools: fc6 sees 6 * 6 * 256 inputs.
  assert p["fc6"]["kernel"].shape == (9216, 4096)
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((5, 220, 220, 3))), variables)
  assert out.shape == (5, joints, 2) and out.dtype == jnp.float32


def test_cascade_stages_have_own_weights_of_the_same_architecture():
  model = deeppose.DeepPoseCascade(14, torso=(9, 2))
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 220, 220, 3))))
  assert set(variables["params"]) == {"stage1", "stage2", "stage3"}
  assert helpers.count(variables) == 3 * 58_396_060
  outs = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 220, 220, 3))), variables)
  assert [o.shape for o in outs] == [(2, 14, 2)] * 3


@pytest.mark.parametrize("size,k,alpha", [(5, 2.0, 1e-4), (3, 1.0, 0.5)])
def test_local_response_norm_matches_the_formula(size, k, alpha):
  x = np.random.default_rng(0).normal(size=(2, 3, 4, 7)).astype(np.float32) * 3
  want = np.empty_like(x)
  for c in range(7):
    window = x[..., max(0, c - size // 2):c + (size - 1) // 2 + 1]
    want[..., c] = x[..., c] / (k + alpha * np.sum(window**2, axis=-1)) ** 0.75
  got = layers.local_response_norm(jnp.asarray(x), size=size, k=k, alpha=alpha)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_tiny_forward_dropout_and_batch_norm_variant():
  x = jax.random.normal(jax.random.key(1), (2, 48, 48, 3))
  model = deeppose.DeepPoseNetTiny(5)
  variables = helpers.fake_init(model, x)
  assert set(variables) == {"params"}
  apply = jax.jit(lambda v, train, rng: model.apply(v, x, train=train, rngs={"dropout": rng}),
                  static_argnums=1)
  eval_out = apply(variables, False, jax.random.key(2))
  assert eval_out.shape == (2, 5, 2)
  np.testing.assert_array_equal(eval_out, apply(variables, False, jax.random.key(3)))
  assert not np.allclose(apply(variables, True, jax.random.key(2)), eval_out)
  with pytest.raises(ValueError, match="36x36 input is too small"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 36, 36, 3))))

  bn = deeppose.DeepPoseNetTiny(5, batch_norm=True)
  variables = helpers.fake_init(bn, x)
  assert "bn1" in variables["params"] and "bias" not in variables["params"]["conv1"]
  _, updates = jax.jit(lambda v: bn.apply(v, x, train=True, rngs={"dropout": jax.random.key(2)},
                                         mutable=["batch_stats"]))(variables)
  assert not np.allclose(updates["batch_stats"]["bn1"]["mean"],
                         variables["batch_stats"]["bn1"]["mean"])


_crop = jax.jit(deeppose.crop_patches, static_argnums=3)  # Eagerly, each op compiles apart.


def test_crop_of_the_whole_image_is_the_image():
  image = jax.random.normal(jax.random.key(0), (1, 12, 12, 2))
  patches = _crop(image, jnp.array([[[5.5, 5.5]]]), jnp.array([[12.0]]), 12)
  assert patches.shape == (1, 1, 12, 12, 2)
  np.testing.assert_allclose(patches[0, 0], image[0], atol=1e-6)


def test_crop_samples_bilinearly_and_zero_outside():
  ys, xs = np.mgrid[0:20, 0:30].astype(np.float32)
  image = np.stack([2 * xs + 1, 3 * ys - xs], axis=-1)[None]  # Linear: bilinear is exact.
  centers = jnp.array([[[11.3, 7.6], [-50.0, -50.0]]])
  sides = jnp.array([[5.0, 4.0]])
  patches = _crop(jnp.asarray(image), centers, sides, 7)
  offsets = ((np.arange(7) + 0.5) / 7 - 0.5) * 5.0
  px, py = np.meshgrid(11.3 + offsets, 7.6 + offsets)
  np.testing.assert_allclose(patches[0, 0, ..., 0], 2 * px + 1, rtol=1e-5)
  np.testing.assert_allclose(patches[0, 0, ..., 1], 3 * py - px, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(patches[0, 1], 0.0)


def test_joint_boxes_use_the_torso_diameter_and_a_floor():
  joints = jnp.array([[[0.0, 0.0], [3.0, 4.0], [9.0, 9.0]], [[1.0, 1.0], [1.0, 1.0], [2.0, 2.0]]])
  centers, sides = deeppose.joint_boxes(joints, (0, 1), 1.5, min_side=0.5)
  np.testing.assert_array_equal(centers, joints)
  np.testing.assert_allclose(sides, [[7.5] * 3, [0.5] * 3])


@pytest.mark.parametrize("joint_cov", [False, True])
def test_sample_displacements_have_the_given_moments(joint_cov):
  mean = np.array([[0.1, -0.2], [0.0, 0.3]], np.float32)
  per_joint = np.array([[[0.04, 0.01], [0.01, 0.02]], [[0.01, 0.0], [0.0, 0.0]]], np.float32)
  cov = np.zeros((4, 4), np.float32)
  cov[:2, :2], cov[2:, 2:] = per_joint
  if joint_cov:
    cov[0, 2] = cov[2, 0] = 0.015  # x of joint 0 with x of joint 1.
  delta = deeppose.sample_displacements(jax.random.key(0), mean, cov if joint_cov else per_joint,
                                        (20_000,))
  assert delta.shape == (20_000, 2, 2) and np.all(np.isfinite(delta))  # Singular cov is fine.
  np.testing.assert_allclose(delta.mean(0), mean, atol=0.01)
  np.testing.assert_allclose(np.cov(np.asarray(delta).reshape(-1, 4).T), cov, atol=3e-3)
  with pytest.raises(ValueError, match="cov"):
    deeppose.sample_displacements(jax.random.key(0), mean, per_joint[:1])


def _tiny_cascade():
  model = deeppose.DeepPoseCascadeTiny(3, torso=(0, 1), box_factor=1.5, patch_size=40)
  images = jax.random.normal(jax.random.key(1), (2, 48, 48, 3))
  return model, images, helpers.fake_init(model, images)


def test_refine_takes_row_i_of_the_patch_around_joint_i():
  model, images, variables = _tiny_cascade()
  current = jnp.array([[[-0.1, -0.2], [0.1, 0.2], [0.3, -0.3]],
                       [[0.0, 0.0], [0.2, 0.0], [-0.2, 0.1]]])
  got = jax.jit(lambda v, y: model.apply(v, images, y, 2, method="refine"))(variables, current)
  # The same computation spelled out: patches around each joint through stage 2's network.
  pixels = current * 48 + 23.5
  sides = 1.5 * np.linalg.norm(pixels[:, 0] - pixels[:, 1], axis=-1)
  sides = np.repeat(sides[:, None], 3, axis=1)

  def by_hand(params):
    patches = deeppose.crop_patches(images, pixels, sides, 40).reshape(6, 40, 40, 3)
    return deeppose.DeepPoseNetTiny(3).apply({"params": params}, patches).reshape(2, 3, 3, 2)

  out = jax.jit(by_hand)(variables["params"]["stage2"])
  own = np.stack([out[:, i, i] for i in range(3)], axis=1)
  np.testing.assert_allclose(got, current + own * sides[..., None] / 48, rtol=1e-4, atol=1e-6)
  assert np.abs(got - current).max() > 1e-4


def test_cascade_chains_stages_and_checks_its_arguments():
  model, images, variables = _tiny_cascade()
  outs = jax.jit(lambda v: model.apply(v, images))(variables)
  assert len(outs) == 3 and all(o.shape == (2, 3, 2) for o in outs)
  stage1 = jax.jit(lambda p: deeppose.DeepPoseNetTiny(3).apply({"params": p}, images))
  np.testing.assert_allclose(outs[0], stage1(variables["params"]["stage1"]), rtol=1e-5)
  refine = jax.jit(lambda v, y: model.apply(v, images, y, 3, method="refine"))
  np.testing.assert_allclose(outs[2], refine(variables, outs[1]), rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="stage=4"):
    jax.eval_shape(lambda v: model.apply(v, images, outs[0], 4, method="refine"), variables)
  bad = deeppose.DeepPoseCascadeTiny(3, torso=(1, 3))
  with pytest.raises(ValueError, match="torso"):
    jax.eval_shape(lambda: bad.init(jax.random.key(0), images))


def test_stage1_sees_a_resized_image_and_patches_come_from_the_full_resolution():
  model = deeppose.DeepPoseCascadeTiny(3, torso=(0, 1), box_factor=1.5, stage1_size=48)
  images = jax.random.normal(jax.random.key(2), (2, 96, 96, 3))
  variables = helpers.fake_init(model, images)
  # Parameters as at 48 px: stage 1 on the resized image, patches of 48 px by default.
  small = deeppose.DeepPoseCascadeTiny(3, torso=(0, 1), box_factor=1.5)
  same = jax.eval_shape(lambda: small.init(jax.random.key(0), jnp.zeros((1, 48, 48, 3))))
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, same)
  outs = jax.jit(lambda v: model.apply(v, images))(variables)
  resized = images.reshape(2, 48, 2, 48, 2, 3).mean(axis=(2, 4))  # 2 x 2 blocks averaged.
  stage1 = jax.jit(lambda p: deeppose.DeepPoseNetTiny(3).apply({"params": p}, resized))
  np.testing.assert_allclose(outs[0], stage1(variables["params"]["stage1"]), rtol=1e-5)
  # The refinement patches are cut from the 96 px images, not from the resized ones.
  refine = jax.jit(lambda v, x, y: model.apply(v, x, y, 2, method="refine"))
  np.testing.assert_allclose(outs[1], refine(variables, images, outs[0]), rtol=1e-4, atol=1e-6)
  blurred = jnp.repeat(jnp.repeat(resized, 2, axis=1), 2, axis=2)  # Same stage 1 input ...
  np.testing.assert_allclose(jax.jit(lambda v: model.apply(v, blurred))(variables)[0], outs[0],
                             rtol=1e-5, atol=1e-6)
  assert np.abs(refine(variables, blurred, outs[0]) - outs[1]).max() > 1e-5  # ... not stage 2's.
  # Sizes that are not a multiple: the anti-aliased linear resize.
  odd = jax.random.normal(jax.random.key(3), (1, 70, 70, 3))
  np.testing.assert_allclose(deeppose.downsample(odd, 48),
                             jax.image.resize(odd, (1, 48, 48, 3), "linear", antialias=True))
  with pytest.raises(ValueError, match="stage1_size=96"):
    deeppose.downsample(odd, 96)
