"""Heat-map codec: encode/decode round trip, flip alignment, weights."""

from hypothesis import given, settings, strategies as st
import numpy as np

from jaxpose.codecs import heatmap


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(1.0, 30.0), st.floats(1.0, 22.0)), min_size=1,
                max_size=6))
def test_round_trip_within_a_quarter_pixel(points):
  joints = np.asarray(points, np.float32)
  targets, weights = heatmap.encode(joints, np.ones(len(points)), (24, 32), sigma=1.0)
  coords, maxvals = heatmap.decode(np.asarray(targets))
  assert np.all(np.abs(np.asarray(coords) - joints) <= 0.25 + 1e-5)
  assert np.all(np.asarray(weights) == 1)
  assert np.all(np.asarray(maxvals) > 0.6)


def test_missing_and_far_outside_joints_have_zero_weight_and_empty_maps():
  joints = np.array([[5.0, 5.0], [5.0, 5.0], [-10.0, 4.0], [17.0, 8.0]], np.float32)
  visible = np.array([1, 0, 1, 1], np.float32)
  targets, weights = heatmap.encode(joints, visible, (16, 16), sigma=1.0)
  np.testing.assert_array_equal(np.asarray(weights), [1, 0, 0, 1])
  assert np.asarray(targets)[..., 1].max() == 0 and np.asarray(targets)[..., 2].max() == 0
  # A joint just outside the map still gets the tail of its Gaussian.
  assert 0 < np.asarray(targets)[..., 3].max() < 1


def test_input_heatmap_alignment_commutes_with_flip():
  stride, size = 4, 64
  x = np.linspace(-0.5, size - 0.5, 37)
  u = heatmap.input_to_heatmap(x, stride)
  u_flip = heatmap.input_to_heatmap(size - 1 - x, stride)
  np.testing.assert_allclose(u_flip, size // stride - 1 - u, atol=1e-6)
  np.testing.assert_allclose(heatmap.heatmap_to_input(u, stride), x, atol=1e-5)


def test_decode_shift_direction_and_batch_dims():
  maps = np.zeros((2, 8, 8, 1), np.float32)
  maps[0, 3, 4, 0], maps[0, 3, 5, 0] = 1.0, 0.5  # Higher right neighbour: x + 0.25.
  maps[1, 6, 2, 0], maps[1, 5, 2, 0] = 1.0, 0.4  # Higher upper neighbour: y - 0.25.
  coords, _ = heatmap.decode(maps)
  np.testing.assert_allclose(np.asarray(coords)[:, 0], [[4.25, 3.0], [2.0, 5.75]])
