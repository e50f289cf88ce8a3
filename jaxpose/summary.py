r"""Parameter count and forward cost of a config's model, without compiling a training step.

  python -m jaxpose.summary configs/hourglass_mpii.py
  python -m jaxpose.summary configs/hourglass_mpii.py:2      # config argument after ':'

Prints `params: N` (trainable parameters), the BatchNorm statistics, and the forward GFLOPs per
image: those of its convolutions and matrix products (`matmul_flops`, every iteration of a loop
counted, the figure model-FLOPs utilisation is computed from) and XLA's cost analysis of the
lowered (not compiled) forward pass (elementwise work included, a loop's body counted once).
Both count a multiply-add as 2 FLOPs; papers that quote "FLOPs" often mean multiply-adds (half).
"""

import argparse
import importlib.util
import math
import sys

import jax
from jax.extend import core as jax_core
import jax.numpy as jnp
import numpy as np


def load_config(spec: str):
  """'path/to/config.py[:arg]' -> ConfigDict (as ml_collections' config_flags does)."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_jaxpose_config", path)
  if module_spec is None:
    raise FileNotFoundError(f"Config file {path!r} not found.")
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except FileNotFoundError:
    raise FileNotFoundError(f"Config file {path!r} not found.") from None
  return module.get_config(arg) if arg else module.get_config()


def count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def matmul_flops(jaxpr) -> int:
  """FLOPs of the convolutions and matrix products in a (closed) jaxpr, 2 per multiply-add,
  nested programs included: a scan's body `length` times, the costliest branch of a cond, a
  while loop's body once (its trip count is not known before it runs). The convention of
  model-FLOPs utilisation: what the network must compute, whatever the compiler adds."""
  total = 0
  for eqn in getattr(jaxpr, "jaxpr", jaxpr).eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (lhs_contracting, _), _ = eqn.params["dimension_numbers"]
      lhs, out = eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape
      total += 2 * math.prod(out) * math.prod(lhs[d] for d in lhs_contracting)
    elif name == "conv_general_dilated":  # Per output: kernel taps x input features / groups.
      rhs, out = eqn.invars[1].aval.shape, eqn.outvars[0].aval.shape
      out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
      total += 2 * math.prod(out) * (math.prod(rhs) // out_features)
    elif name == "scan":
      total += eqn.params["length"] * matmul_flops(eqn.params["jaxpr"])
    elif name == "cond":
      total += max(matmul_flops(branch) for branch in eqn.params["branches"])
    else:
      total += sum(matmul_flops(sub) for sub in jax_core.jaxprs_in_params(eqn.params))
  return total


def summarize(config) -> dict:
  """{"params", "model_state", "gflops", "xla_gflops", "input_shape", "output_shapes"} for one
  image.

  Shapes through `jax.eval_shape` of the family's init; the costs of the prediction without flip
  test (one forward pass, or the whole cascade / every iteration for the families that have
  them): `matmul_flops` of its traced program, and XLA's analysis of it lowered (not
  compiled)."""
  from jaxpose import families  # pylint: disable=g-import-not-at-top
  family = families.create_family(config)
  size = family.input_size
  variables = families.eval_shape_variables(family, training=False)  # What evaluation restores.
  batch = {"image": jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32),
           "transform": jax.ShapeDtypeStruct((1, 3, 3), jnp.float32)}
  forward = jax.jit(lambda v, b: family.predict(v, b, False))
  outputs = jax.eval_shape(forward, variables, batch)
  traced = forward.trace(variables, batch)
  cost = traced.lower().cost_analysis() or {}
  if isinstance(cost, (list, tuple)):  # Older JAX: one dict per device.
    cost = cost[0] if cost else {}
  params, model_state = families.split_variables(variables)
  return {
      "params": count(params),
      "params_by_subtree": {k: count(v) for k, v in params.items()},
      "model_state": count(model_state),
      "gflops": matmul_flops(traced.jaxpr) / 1e9,
      "xla_gflops": float(cost.get("flops", float("nan"))) / 1e9,
      "input_shape": batch["image"].shape,
      "output_shapes": [o.shape for o in jax.tree.leaves(outputs)],
  }


def main(argv) -> None:
  parser = argparse.ArgumentParser(prog="python -m jaxpose.summary", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("config", metavar="CONFIG_FILE[:ARG]", help="a config file, with the "
                      "argument of its get_config after ':' (e.g. configs/hourglass_mpii.py:2)")
  config = load_config(parser.parse_args(argv[1:]).config)
  s = summarize(config)
  print(f"model: {config.model.name} {dict(config.model)}")
  print(f"input: {s['input_shape']}  predicts: joints {s['output_shapes'][0]}, "
        f"scores {s['output_shapes'][1]}")
  print(f"params: {s['params']}")
  if len(s["params_by_subtree"]) > 1 and len(s["params_by_subtree"]) <= 8:
    print("  " + ", ".join(f"{k}: {v}" for k, v in s["params_by_subtree"].items()))
  print(f"model state: {s['model_state']} (e.g. BatchNorm running means and variances)")
  print(f"gflops: {s['gflops']:.2f} per image forward (convolutions and matrix products, "
        f"{s['gflops'] / 2:.2f} G multiply-adds; XLA's cost analysis of the whole program: "
        f"{s['xla_gflops']:.2f}, a loop's body once)")


if __name__ == "__main__":
  from jaxpose import runtime  # pylint: disable=g-import-not-at-top
  runtime.exit_without_teardown(lambda: runtime.clean_errors(main, "jaxpose.summary")(sys.argv))
