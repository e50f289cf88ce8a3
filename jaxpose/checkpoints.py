"""Orbax checkpoints: the train state plus the config that made it.

A workdir holds `checkpoints/<step>/{state,meta}`; `meta` records the config and the model's
signature so that a different model's checkpoint is refused with a clear message, and eval.py can
rebuild the model from a checkpoint alone.
"""

import json

from etils import epath
import jax
import orbax.checkpoint as ocp


def model_signature(config) -> dict:
  """What must match between a checkpoint and the model restoring it."""
  return {"model": config.model.to_dict(), "skeleton": config.dataset.skeleton}


def manager(directory, config=None, *, read_only=False) -> ocp.CheckpointManager:
  pp = ocp.checkpoint_managers.preservation_policy
  keep = config.keep_checkpoints if config is not None else 3
  policy = pp.AnyPreservationPolicy([
      pp.LatestN(keep),
      pp.BestN(get_metric_fn=lambda m: m["pckh"], n=1, keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=not read_only,
                                         read_only=read_only, cleanup_tmp_directories=True)
  # Orbax needs an absolute path (a relative one fails inside the async save).
  return ocp.CheckpointManager(epath.Path(directory).absolute(), options=options,
                               item_names=("state", "meta"))


def save(manager, state, config, step: int, pckh: float | None = None):
  meta = {"config": json.loads(config.to_json()), "signature": model_signature(config),
          "step": step}
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             meta=ocp.args.JsonSave(meta)),
               metrics=None if pckh is None else {"pckh": pckh}, force=True)


def read_meta(manager, step: int) -> dict:
  return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def check_compatible(meta: dict, config, where: str) -> None:
  want, got = model_signature(config), meta["signature"]
  if want != got:
    raise ValueError(f"{where} holds a checkpoint of a different model: checkpoint "
                     f"{json.dumps(got, sort_keys=True)} vs config "
                     f"{json.dumps(want, sort_keys=True)}. Use another --workdir.")


def restore_state(manager, step: int, abstract_state):
  """Restores `step` onto the shardings of `abstract_state` (any mesh size)."""
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target)))
  return restored["state"]


def resolve(path: str) -> tuple[epath.Path, int | None]:
  """A workdir, its checkpoints/ folder or one step's folder -> (checkpoints dir, step or None).

  Raises FileNotFoundError naming the path when nothing restorable is there.
  """
  p = epath.Path(path)
  if not p.exists():
    raise FileNotFoundError(f"No checkpoint at {path!r}: the path does not exist.")
  if p.name.isdigit() and (p / "state").exists():
    return p.parent, int(p.name)
  for d in (p / "checkpoints", p):
    if d.exists() and any(c.name.isdigit() and (c / "state").exists() for c in d.iterdir()):
      return d, None
  raise FileNotFoundError(
      f"No checkpoint at {path!r}: expected a workdir with checkpoints/<step>/ (from train.py) "
      "or a single checkpoints/<step> folder.")


def restore_variables(directory, step: int, abstract_variables):
  """Only the model's variables of a step ({"params", **model state}, no optimiser state),
  restored onto the shardings of `abstract_variables`. Checkpoints written before the Family
  interface (whose state held `batch_stats` beside `params`) load too."""
  params = abstract_variables["params"]
  model_state = {k: v for k, v in abstract_variables.items() if k != "params"}
  targets = [{"params": params, "model_state": model_state}]
  if set(model_state) <= {"batch_stats"}:  # The layout before the Family interface.
    targets.append({"params": params, **model_state})
  errors = []
  for target in targets:
    reader = manager(directory, read_only=True)  # A fresh manager for each handler.
    try:
      restored = reader.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True)))["state"]
    except (ValueError, KeyError, FileNotFoundError) as e:
      errors.append(str(e).splitlines()[0][:300])
      continue
    nested = restored.pop("model_state", {})
    return {**restored, **nested}
  raise ValueError(f"Checkpoint step {step} in {directory} could not be read as a jaxpose "
                   f"train state: {errors[0]}")
