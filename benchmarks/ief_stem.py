r"""IEF's first convolution over the pose maps: in closed form against the rendered maps.

  python benchmarks/ief_stem.py               # the CPU quickstart's network: 128 px, 1/4 width
  python benchmarks/ief_stem.py --paper --batch 4   # the paper's: 224 px, full width

IEF's f sees the image with K + 1 Gaussian maps as more channels. `jaxpose.models.ief` never
renders them: the first convolution's share of the maps is computed from their 1-D factors
(`ief.conv_pose_maps`). This times, for that model and for the same model rendering the maps
and concatenating them to the image (`render_maps=True`, the release's layout), with the same
variables: the training step's work (the loss of one correction, batch statistics on, and its
gradient with respect to every parameter) and inference (T iterations from the mean pose),
jitted, medians over --repeats calls after two, the two models taking turns --rounds times
(this machine is shared: compare the ratio, not the seconds across runs). Also the largest
difference of their iterates and gradients, relative to the largest value, beside what float32
rounding alone does to the gradient (the rendered model's, its images x (1 + 1e-7)). One
process, one run.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp

from benchmarks import models as bench
from jaxpose import family
from jaxpose.models import ief


def _programs(model, images, poses, target):
  """(train step's work, inference) for `model`, both jitted."""

  def loss(params, state):
    pred, new_state = model.apply({"params": params, **state}, images, poses, train=True,
                                  method="correction", mutable=["batch_stats"])
    return jnp.mean(jnp.square(pred - target)), new_state

  train = jax.jit(jax.value_and_grad(loss, has_aux=True))
  infer = jax.jit(lambda v: model.apply(v, images, poses[0]))
  return train, infer


def _median_ms(fn, args, repeats: int) -> float:
  calls = bench.time_calls(lambda: jax.block_until_ready(fn(*args)), 2, repeats)
  return 1000 * float(np.median(calls))


def compare(size: int, model_kwargs: dict, batch: int, joints: int, repeats: int,
            rounds: int) -> dict:
  """Medians (ms) per part and model, and the relative differences (see the docstring)."""
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(-0.5, 0.5, (batch, size, size, 3)), jnp.float32)
  poses = jnp.asarray(rng.uniform(-0.4, 0.4, (batch, joints, 2)), jnp.float32)
  target = jnp.asarray(rng.uniform(-0.05, 0.05, (batch, joints, 2)), jnp.float32)
  models = {"closed form": ief.IEF(joints, num_iterations=3, **model_kwargs),
            "rendered": ief.IEF(joints, num_iterations=3, render_maps=True, **model_kwargs)}
  # The trainer's initialiser: only what the values need, compiled or op by op, whichever is
  # cheaper (a flax init run eagerly compiles every operation of the forward pass apart).
  variables = family.run_init(models["rendered"].init, jax.random.key(0), images[:1], poses[0])
  state = {c: v for c, v in variables.items() if c != "params"}
  programs = {name: _programs(m, images, poses, target) for name, m in models.items()}
  grads = [programs[n][0](variables["params"], state)[1] for n in models]
  # The scale of float32 rounding in this gradient: the rendered model's own, on images
  # multiplied by 1 + 1e-7 (training-mode BatchNorm amplifies rounding).
  nudged = _programs(models["rendered"], images * (1 + 1e-7), poses, target)[0]
  times = {name: {"train": [], "infer": []} for name in models}
  for _ in range(rounds):
    for name, (train, infer) in programs.items():
      times[name]["train"].append(_median_ms(train, (variables["params"], state), repeats))
      times[name]["infer"].append(_median_ms(infer, (variables,), repeats))
  return {"ms": {n: {part: float(np.median(t)) for part, t in parts.items()}
                 for n, parts in times.items()},
          "iterates": bench.relative_difference(*[programs[n][1](variables) for n in models]),
          "gradients": bench.relative_difference(*grads),
          "rounding": bench.relative_difference(nudged(variables["params"], state)[1],
                                                grads[1])}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--paper", action="store_true",
                      help="The paper's network (224 px, full width, LRN) instead of the "
                      "quickstart's (128 px, 1/4 width, BatchNorm).")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--joints", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--rounds", type=int, default=2)
  args = parser.parse_args()
  if args.paper:
    size, kwargs = 224, dict(dropout_rate=0.0)
  else:
    size, kwargs = 128, dict(width_divisor=4, batch_norm=True, dropout_rate=0.0, map_sigma=0.05)
  out = compare(size, kwargs, args.batch, args.joints, args.repeats, args.rounds)
  network = "paper" if args.paper else "quickstart"
  print(f"IEF at {size} px, batch {args.batch}, {args.joints} joints ({network} network); "
        f"{jax.devices()[0].device_kind}")
  print("| | closed form (ms) | rendered (ms) | ratio |\n|---|---:|---:|---:|")
  for part, label in (("train", "one correction, value and gradient"),
                      ("infer", "inference, 3 iterations")):
    fast, slow = out["ms"]["closed form"][part], out["ms"]["rendered"][part]
    print(f"| {label} | {fast:.1f} | {slow:.1f} | {fast / slow:.2f} |")
  print(f"largest difference, relative: iterates {out['iterates']:.1e}, gradients "
        f"{out['gradients']:.1e} (the rendered model's own on images x (1 + 1e-7): "
        f"{out['rounding']:.1e})")


if __name__ == "__main__":
  main()
