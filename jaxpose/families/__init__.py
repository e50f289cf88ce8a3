"""Model families: the one place that knows a model.

The trainer knows optimisers, shardings, phases and the loop; the evaluator knows splits, the
inverse crop warp and the metrics; neither ever calls a model. They talk to a `Family`:

  init(rng) -> variables
      {"params": ..., other collections}: everything but "params" is the model state
      (BatchNorm statistics today) that `TrainState.model_state` carries opaquely.
  loss(params, model_state, batch, rng, *, phase=0) -> (loss, (model_state, metrics))
      `batch` holds "image" [B,S,S,3], "joints" [B,K,2] crop pixels, "visible" [B,K] and
      whatever `target_fn` added; `rng` is this step's key (dropout, sampled training inputs);
      `phase` indexes the config's training phases (static: one compile per phase).
  predict(variables, batch, flip_test) -> (joints, scores)
      joints in crop pixels, [B,K,2], or [B,T,K,2] for families that report every stage or
      iteration (the last is the answer); scores [B,K]. Flip testing, cascades and scanned
      iterations all happen inside.
  stage_name: what one step along that T axis is called in the evaluator's report ("stage",
      the default; IEF says "iteration").
  target_fn: optional per-example tf.data targets (a codec's `encode`), or None when the loss
      builds its own targets on the device.
  begin_phase(phase, variables, context) -> variables: optional; runs once when a phase
      starts (e.g. the DeepPose cascade measures the previous stage's errors). Whatever it
      computes lives in the variables, so resuming inside a phase needs nothing else.
  segments: optional `family.Segmentation`: `loss` cut into segments that each own some
      top-level parameter subtrees and pass a carry to the next (the hourglass: the stem, then
      each stack with its maps' loss), for a step run as a program per kind of segment
      (config `segmented_step`, `steps.SegmentedStep`). A family without them trains as one
      or two programs.

What a new family writes:
  1. jaxpose/models/NAME.py, a pure linen module (no configs, no flags).
  2. configs/NAME_DATASET.py with config.model.name = NAME (and a quickstart variant).
  3. Here: a builder `(config, skeleton, dtype) -> Family` that picks a codec from
     jaxpose/codecs and a loss, and one row in `BUILDERS`.
Nothing in the trainer or the evaluator changes; if a family needs more, the interface changes
for every family.
"""

import jax.numpy as jnp
import ml_collections

from jaxpose import skeletons
from jaxpose.families import heatmaps
from jaxpose.families import regression
from jaxpose.family import (Family, PhaseContext, apply_train, compile_init,
                            eval_shape_variables, heatmap_losses, heatmap_predict, init_mode,
                            init_variables, release_compiled_programs, run_init,
                            split_variables)

# The table of families: config.model.name -> builder (config, skeleton, dtype) -> Family.
BUILDERS = {
    "hourglass": heatmaps.hourglass_family,
    "cpm": heatmaps.cpm_family,
    "tompson": heatmaps.tompson_family,
    "deeppose": regression.deeppose_family,
    "ief": regression.ief_family,
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

__all__ = ["BUILDERS", "Family", "PhaseContext", "apply_train", "compile_init", "create_family",
           "eval_shape_variables", "heatmap_losses", "heatmap_predict", "init_mode",
           "init_variables", "release_compiled_programs", "run_init", "split_variables"]


def create_family(config: ml_collections.ConfigDict) -> Family:
  """Maps a config to its family."""
  skeleton = skeletons.get(config.dataset.skeleton)
  dtype = DTYPES.get(config.mixed_precision)
  if dtype is None:
    raise ValueError(f"config.mixed_precision={config.mixed_precision!r}; expected one of "
                     f"{sorted(DTYPES)}.")
  name = config.model.name
  if name not in BUILDERS:
    raise ValueError(f"Unknown config.model.name {name!r}; known: {sorted(BUILDERS)}.")
  return BUILDERS[name](config, skeleton, dtype)
