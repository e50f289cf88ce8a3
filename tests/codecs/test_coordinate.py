"""Coordinate codec: box normalisation, round trips, flip consistency, missing joints."""

from hypothesis import given, settings, strategies as st
import numpy as np
import pytest

from jaxpose.codecs import Codec
from jaxpose.codecs import coordinate

PERM = np.array([1, 0, 2, 4, 3])  # Two left/right pairs and a centre joint.
POINTS = st.lists(st.tuples(st.floats(-80.0, 330.0, width=32), st.floats(-80.0, 330.0, width=32)),
                  min_size=5, max_size=5)


def test_coordinate_codec_is_a_codec():
  assert isinstance(coordinate.CoordinateCodec(256), Codec)
  with pytest.raises(ValueError, match="input_size"):
    coordinate.CoordinateCodec(0)


@pytest.mark.parametrize("size", [64, 256])
def test_the_crop_spans_minus_to_plus_a_half(size):
  codec = coordinate.CoordinateCodec(size)
  # The crop's edges, its first and last pixel centres and its centre.
  x = np.array([-0.5, 0.0, (size - 1) / 2, size - 1.0, size - 0.5], np.float32)
  joints = np.stack([x, x[::-1]], -1)
  u = np.asarray(codec.encode(joints, np.ones(5))["coords"])
  expected = np.array([-0.5, -0.5 + 0.5 / size, 0.0, 0.5 - 0.5 / size, 0.5])
  np.testing.assert_allclose(u, np.stack([expected, expected[::-1]], -1), atol=1e-7)


@settings(max_examples=40, deadline=None)
@given(POINTS, st.sampled_from([64, 220, 256]))
def test_round_trip(points, size):
  codec = coordinate.CoordinateCodec(size)
  joints = np.asarray(points, np.float32)
  out = codec.encode(joints, np.ones(5))
  np.testing.assert_array_equal(out["coord_weight"], np.ones(5))
  decoded, scores = codec.decode(np.asarray(out["coords"])[None])
  np.testing.assert_allclose(np.asarray(decoded)[0], joints, atol=1e-4)
  np.testing.assert_array_equal(scores, np.ones((1, 5)))


@settings(max_examples=40, deadline=None)
@given(POINTS, st.lists(st.booleans(), min_size=5, max_size=5))
def test_encode_of_the_mirrored_crop_is_flip_back_of_encode(points, visible):
  codec = coordinate.CoordinateCodec(256)
  joints = np.asarray(points, np.float32)
  visible = np.asarray(visible, np.float32)
  mirrored = np.stack([255.0 - joints[:, 0], joints[:, 1]], -1)[PERM]  # The pipeline's flip.
  direct = codec.encode(mirrored, visible[PERM])
  plain = codec.encode(joints, visible)
  back = np.asarray(codec.flip_back(np.asarray(plain["coords"])[None], PERM))[0]
  np.testing.assert_allclose(np.asarray(direct["coords"]), back, atol=1e-6)
  np.testing.assert_array_equal(direct["coord_weight"], np.asarray(plain["coord_weight"])[PERM])
  np.testing.assert_array_equal(codec.flip_back(back[None], PERM)[0], plain["coords"])


def test_missing_joints_get_zero_weight_and_finite_targets():
  codec = coordinate.CoordinateCodec(64)
  joints = np.array([[10.0, 20.0], [np.nan, np.nan], [-1.0, -1.0]], np.float32)
  out = codec.encode(joints, np.array([1, 0, 0]))
  np.testing.assert_array_equal(out["coord_weight"], [1, 0, 0])
  np.testing.assert_allclose(out["coords"], [[(10 - 31.5) / 64, (20 - 31.5) / 64], [0, 0], [0, 0]])


def test_normalize_per_example_and_per_joint_boxes():
  rng = np.random.default_rng(0)
  joints = rng.uniform(0, 200, (3, 4, 2)).astype(np.float32)
  # One box per example: centre [B, 1, 2], side [B, 1].
  center, side = rng.uniform(50, 150, (3, 1, 2)), rng.uniform(20, 90, (3, 1))
  u = np.asarray(coordinate.normalize(joints, center, side))
  np.testing.assert_allclose(u, (joints - center) / side[..., None], rtol=1e-5)
  np.testing.assert_allclose(coordinate.denormalize(u, center, side), joints, atol=1e-4)
  # One box per joint (the cascade's refinement stages): centre [B, K, 2], side [B, K].
  center, side = joints + rng.uniform(-5, 5, joints.shape), rng.uniform(10, 30, (3, 4))
  u = np.asarray(coordinate.normalize(joints, center, side))
  assert np.all(np.abs(u) <= 0.5)
  np.testing.assert_allclose(coordinate.denormalize(u, center, side), joints, atol=1e-4)
  # The codec is the crop box.
  codec = coordinate.CoordinateCodec(64)
  np.testing.assert_allclose(codec.encode(joints[0], np.ones(4))["coords"],
                             coordinate.normalize(joints[0], [31.5, 31.5], 64), atol=1e-7)
