"""Heat-map codec: round trips, flip alignment and flip_back, borders, the jnp renderer."""

from hypothesis import given, settings, strategies as st
import jax
import numpy as np
import pytest

from jaxpose.codecs import Codec
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


# ---------------------------------------------------------------------------------------------
# HeatmapCodec: the Codec protocol in input pixels.

CODEC = heatmap.HeatmapCodec(input_size=64, output_size=16, sigma=1.0)
PERM = np.array([1, 0, 2, 4, 3])  # Two left/right pairs and a centre joint.


def test_heatmap_codec_is_a_codec():
  assert isinstance(CODEC, Codec)
  with pytest.raises(ValueError, match="sigma"):
    heatmap.HeatmapCodec(64, 16, sigma=0.0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(4.0, 59.0), st.floats(4.0, 59.0)), min_size=5,
                max_size=5))  # One K: one compilation of the eager decode.
def test_codec_round_trip_in_input_pixels(points):
  joints = np.asarray(points, np.float32)
  out = CODEC.encode(joints, np.ones(len(points)))
  assert out["targets"].shape == (16, 16, len(points))
  coords, scores = CODEC.decode(np.asarray(out["targets"])[None])
  # A quarter heat-map pixel of the argmax's shift is one input pixel at stride 4, plus up to
  # half a heat-map pixel of quantisation.
  assert np.all(np.abs(np.asarray(coords)[0] - joints) <= 0.75 * CODEC.stride + 1e-4)
  assert np.all(np.asarray(scores) > 0.6)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(-0.5, 63.5), st.floats(-0.5, 63.5), st.booleans()),
                min_size=5, max_size=5))
def test_encode_of_the_mirrored_crop_is_flip_back_of_encode(rows):
  joints = np.asarray([r[:2] for r in rows], np.float32)
  visible = np.asarray([r[2] for r in rows], np.float32)
  # The pipeline's mirror (x -> S - 1 - x) with left and right joints swapped.
  mirrored = np.stack([63.0 - joints[:, 0], joints[:, 1]], -1)[PERM]
  direct = CODEC.encode(mirrored, visible[PERM])
  plain = CODEC.encode(joints, visible)
  back = CODEC.flip_back(np.asarray(plain["targets"])[None], PERM)[0]
  np.testing.assert_allclose(np.asarray(direct["targets"]), back, atol=1e-5)
  np.testing.assert_array_equal(direct["target_weight"], np.asarray(plain["target_weight"])[PERM])
  # Mirroring twice is the identity.
  np.testing.assert_array_equal(CODEC.flip_back(back[None], PERM)[0], plain["targets"])


# (heat-map x, weight, decoded heat-map x) on a 16-wide map, sigma 1: pixel centres 0 and 15,
# the map's edges (half a pixel outside them), and just inside/outside the 3-sigma margin.
BORDERS = [(0.0, 1, 0.0), (15.0, 1, 15.0), (-0.5, 1, 0.0), (15.5, 1, 15.0),
           (-3.49, 1, 0.0), (18.49, 1, 15.0), (-3.51, 0, None), (18.51, 0, None)]


@pytest.mark.parametrize("u,weight,decoded", BORDERS)
@pytest.mark.parametrize("axis", [0, 1])
def test_heatmap_codec_at_the_map_borders(u, weight, decoded, axis):
  uv = np.full((1, 2), 7.0, np.float32)
  uv[0, axis] = u
  joints = heatmap.heatmap_to_input(uv, CODEC.stride)
  out = CODEC.encode(joints, np.ones(1))
  assert float(out["target_weight"][0]) == weight
  maps = np.asarray(out["targets"])
  coords, scores = CODEC.decode(maps[None])
  if weight:
    # The argmax sits on the border pixel, which has one neighbour only: no shift.
    expected = np.array([7.0, 7.0])
    expected[axis] = decoded
    np.testing.assert_array_equal(np.asarray(coords)[0, 0],
                                  heatmap.heatmap_to_input(expected, CODEC.stride))
    assert 0 < float(scores[0, 0]) <= 1
  else:
    assert maps.max() == 0 and float(scores[0, 0]) == 0


def test_jnp_render_equals_tf_encode():
  rng = np.random.default_rng(0)
  joints = rng.uniform(-6.0, 22.0, (2, 3, 5, 2)).astype(np.float32)  # Some beyond 3 sigma.
  visible = (rng.uniform(size=(2, 3, 5)) < 0.8).astype(np.float32)
  maps, weights = jax.jit(heatmap.render, static_argnums=(2, 3))(joints, visible, (12, 16), 1.5)
  assert maps.shape == (2, 3, 12, 16, 5) and weights.shape == (2, 3, 5)
  assert 0 < float(weights.sum()) < weights.size  # Both kinds of weight are exercised.
  for i in np.ndindex(2, 3):
    t, w = heatmap.encode(joints[i], visible[i], (12, 16), 1.5)
    np.testing.assert_allclose(maps[i], t, atol=1e-6)
    np.testing.assert_array_equal(weights[i], w)
  # And through the codec, in input pixels.
  batch = CODEC.render_targets(4 * joints[0], visible[0])
  for b in range(3):
    one = CODEC.encode(4 * joints[0, b], visible[0, b])
    for key in ("targets", "target_weight"):
      np.testing.assert_allclose(batch[key][b], one[key], atol=1e-6)


def test_upsampled_decoding_is_sub_cell_accurate_on_coarse_maps():
  """CPM's release decoding (bicubic upsampling, then the argmax) finds a Gaussian's sub-cell
  centre on a 16x16 map closer than the quarter shift (measured: mean 0.087 against 0.124 cells
  at CPM's sigma, 0.045 against 0.124 for a wider 1.5)."""
  rng = np.random.default_rng(0)
  uv = rng.uniform(2.0, 13.0, (50, 3, 2)).astype(np.float32)  # [B, K, 2] map pixels.
  for sigma, ratio in ((0.875, 0.8), (1.5, 0.5)):
    maps, _ = heatmap.render(uv, np.ones((50, 3)), (16, 16), sigma)
    fine, peaks = heatmap.decode_upsampled(maps, 8)
    assert fine.shape == (50, 3, 2) and peaks.shape == (50, 3)
    fine_err = np.abs(np.asarray(fine) - uv)
    quarter_err = np.abs(np.asarray(heatmap.decode(maps)[0]) - uv)
    assert fine_err.max() < 0.2 and fine_err.mean() < ratio * quarter_err.mean()
  codec = heatmap.HeatmapCodec(128, 16, 0.875, upsample=8)
  joints, _ = codec.decode(maps)
  np.testing.assert_allclose(joints, heatmap.heatmap_to_input(uv, 8.0), atol=8 * 0.2)
  with pytest.raises(ValueError, match="upsample"):
    heatmap.HeatmapCodec(128, 16, 0.875, upsample=-1)


def test_softmax_scores_are_the_peaks_probability_whatever_the_offset():
  # Tompson's spatial model gives log beliefs (logits of a spatial softmax, e.g. all near -88):
  # their maxima are no confidence; the softmax's probability at the peak is.
  rng = np.random.default_rng(0)
  logits = rng.normal(0.0, 1.0, (2, 8, 8, 3)).astype(np.float32)
  logits[0, 3, 4, 0] = 12.0  # One confident map; the others flat-ish.
  codec = heatmap.HeatmapCodec(32, 8, 1.0, scores="softmax")
  joints, scores = codec.decode(logits - 88.0)
  flat = logits.reshape(2, 64, 3)
  expected = np.exp(flat.max(1)) / np.exp(flat).sum(1)
  np.testing.assert_allclose(scores, expected, rtol=1e-5)
  assert scores[0, 0] > 0.99 and np.all(scores[:, 1:] < 0.5) and np.all(scores > 0)
  np.testing.assert_array_equal(joints, heatmap.HeatmapCodec(32, 8, 1.0).decode(logits)[0])
  with pytest.raises(ValueError, match="scores='max'"):
    heatmap.HeatmapCodec(32, 8, 1.0, scores="max")
