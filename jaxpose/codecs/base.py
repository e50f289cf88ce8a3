"""The codec protocol: what the pipeline, the trainer and the evaluator ask of a codec.

A codec turns joints into training targets and model outputs back into joints. It knows
nothing of models: its frame is the network input (crop pixels, centres at integers, the crop
mirrored as x -> S - 1 - x) and its outputs are whatever the model's head predicts.
"""

from typing import Any, Protocol, runtime_checkable

import jax


@runtime_checkable
class Codec(Protocol):
  """Keypoints <-> targets. Implementations are frozen dataclasses of plain hyperparameters."""

  def encode(self, joints, visible) -> dict[str, Any]:
    """Host side, TensorFlow ops, one example: joints [K, 2] in input pixels, visible [K] ->
    dict of target tensors (targets and their per-joint weights)."""
    ...

  def decode(self, outputs) -> tuple[jax.Array, jax.Array]:
    """jax.numpy: batched outputs -> (joints [B, K, 2] in input pixels, scores [B, K])."""
    ...

  def flip_back(self, outputs, flip_permutation) -> Any:
    """jax.numpy: outputs predicted on the mirrored input -> the same outputs in the unmirrored
    frame, left/right joints swapped (`flip_permutation` [K], an involution)."""
    ...
