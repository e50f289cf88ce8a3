"""Orbax checkpoints: the train state plus the config that made it.

A workdir holds `checkpoints/<step>/{state,meta}`; `meta` records the config, the model's
signature (so that a different model's checkpoint is refused with a clear message, and eval.py
can rebuild the model from a checkpoint alone) and the resume signature: the settings that must
not change for a resumed run to continue bit for bit.
"""

import json
import logging as std_logging
import sys
import traceback

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from jaxpose import config_checks

# Config keys that a resumed run must share with the checkpoint to continue bit for bit: the
# optimiser and its schedule, the batches (size, seed, crops, targets, augmentation, data), the
# length of the run, the precision, and a cascade's training phases. Keys a config lacks are left
# out (families differ).
RESUME_KEYS = ("optimizer", "batch_size", "seed", "input_size", "output_size", "sigma", "loss",
               "augment", "dataset.name", "dataset.config", "dataset.train_split",
               "num_train_steps", "num_epochs", "mixed_precision", "phases",
               "precise_bn_batches")


# Model keys added after checkpoints were written, per family, with the value that trained
# those checkpoints: `read_meta` fills them into an older checkpoint's config and signature, so
# resuming compares, and evaluation rebuilds, the model that was trained (an IEF quickstart run
# from before 2026-12-06 resumes; a paper run, now "frozen", does not).
ADDED_MODEL_KEYS = {"ief": {"fixed_path": "current"}}


def with_added_model_keys(meta: dict) -> dict:
  """`meta` (as saved) with the `ADDED_MODEL_KEYS` its config and signature lack, at the
  values that trained it; a newer checkpoint's own values stay."""
  out = dict(meta)
  for part in ("config", "signature"):
    model = out.get(part, {}).get("model")
    if isinstance(model, dict):
      added = ADDED_MODEL_KEYS.get(model.get("name"), {})
      out[part] = {**out[part], "model": {**added, **model}}
  return out


def model_signature(config) -> dict:
  """What must match between a checkpoint and the model restoring it (as JSON values, so a
  tuple in the config equals the list the checkpoint's JSON stores)."""
  return json.loads(json.dumps({"model": config.model.to_dict(),
                                "skeleton": config.dataset.skeleton}))


def resume_signature(config) -> dict:
  """{dotted key: JSON value} of the `RESUME_KEYS` present in `config` (ConfigDict or dict)."""
  tree = json.loads(config.to_json() if hasattr(config, "to_json") else json.dumps(config))
  out = {}
  for key in RESUME_KEYS:
    value = config_checks.lookup(tree, key)
    if value is not None:
      out[key] = value
  if isinstance(out.get("num_train_steps"), int) and out["num_train_steps"] > 0:
    out.pop("num_epochs", None)  # Overridden by num_train_steps: not used.
  if not out.get("precise_bn_batches"):
    out.pop("precise_bn_batches", None)  # Off: as checkpoints from before the key.
  return out


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
          "resume_signature": resume_signature(config), "step": step}
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             meta=ocp.args.JsonSave(meta)),
               metrics=None if pckh is None else {"pckh": pckh}, force=True)




def _flatten(value, prefix: str) -> dict:
  """Nested dicts (and lists of dicts) -> {"prefix.a.b": leaf, "prefix.c[0].d": leaf}."""
  if isinstance(value, dict) and value:
    items = [(f"{prefix}.{k}", v) for k, v in value.items()]
  elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
    items = [(f"{prefix}[{i}]", v) for i, v in enumerate(value)]
  else:
    return {prefix: value}
  out = {}
  for name, item in items:
    out.update(_flatten(item, name))
  return out


def resume_differences(saved: dict, config) -> list[str]:
  """One "config.KEY: checkpoint A, now B" per resume setting that `config` changes."""
  then = _flatten(saved, "config")
  now = _flatten(resume_signature(config), "config")
  absent = object()

  def text(v):
    return "absent" if v is absent else json.dumps(v)

  return [f"{k}: checkpoint {text(then.get(k, absent))}, now {text(now.get(k, absent))}"
          for k in sorted(set(then) | set(now)) if then.get(k, absent) != now.get(k, absent)]


def check_compatible(meta: dict, config, where: str, *, allow_inexact_resume: bool = False) -> None:
  """Refuses to resume from `meta`'s checkpoint (as `read_meta` gives it) with `config` when
  it cannot continue the run.

  A different model (or skeleton) is always refused. Different resume settings (see
  `RESUME_KEYS`) are refused with every differing field named, unless `allow_inexact_resume`,
  which logs them as a warning instead: the run continues, but not bit for bit. A checkpoint
  saved before resume signatures existed gets a warning.

  Raises:
    ValueError: naming `where` and what differs.
  """
  want, got = model_signature(config), meta["signature"]
  if want != got:
    raise ValueError(f"{where} holds a checkpoint of a different model: checkpoint "
                     f"{json.dumps(got, sort_keys=True)} vs config "
                     f"{json.dumps(want, sort_keys=True)}. Use another --workdir.")
  saved = meta.get("resume_signature")
  if saved is None:
    logging.warning("%s: the checkpoint records no resume signature (an older run); its "
                    "optimiser, batch and schedule settings cannot be checked, so the resumed "
                    "run may not continue bit for bit.", where)
    return
  diffs = resume_differences(saved, config)
  if not diffs:
    return
  if allow_inexact_resume:
    logging.warning("%s: resuming with settings that differ from the checkpoint's (%s); "
                    "--allow_inexact_resume: continuing, not bit-exact.", where, "; ".join(diffs))
    return
  raise ValueError(f"{where} holds a checkpoint trained with different settings: "
                   f"{'; '.join(diffs)}. Resuming would not continue that run bit for bit: use "
                   f"another --workdir, restore these values, or pass --allow_inexact_resume "
                   f"to continue anyway (the resumed run is then not bit-exact).")


# ---------------------------------------------------------------------------------------------
# Restoring, and damaged checkpoints.

DAMAGED_DIR = "damaged_checkpoints"  # Beside the checkpoints folder: <workdir>/damaged_checkpoints.


class DamagedCheckpointError(ValueError):
  """A checkpoint step whose files cannot be read (truncated, half-synced, missing)."""


class _AbandonedReadNoise:
  """Drops the reports of reads that orbax abandons when a restore fails.

  When one array of a checkpoint cannot be read, orbax's `asyncio.gather` fails and its event
  loop is closed (orbax.checkpoint._src.asyncio_utils) while the other arrays' TensorStore reads
  are still in flight. When each finishes, TensorStore's done-callback calls
  `loop.call_soon_threadsafe` on the closed loop and reports "RuntimeError: Event loop is closed"
  through `sys.unraisablehook`, one traceback per read; when the pending tasks are collected,
  asyncio logs "Task was destroyed but it is pending!" (or, by timing, the reads' coroutines and
  gathering future are collected with their read errors). The restore's own error says what is
  wrong; these reports (and only these) are dropped.
  """

  installed = False

  @classmethod
  def install(cls) -> None:
    if cls.installed:
      return
    cls.installed = True
    previous = sys.unraisablehook

    def hook(unraisable):
      if not cls.is_closed_loop_callback(unraisable):
        previous(unraisable)

    sys.unraisablehook = hook
    std_logging.getLogger("asyncio").addFilter(cls.keep_log_record)

  @staticmethod
  def is_closed_loop_callback(unraisable) -> bool:
    """The closed loop's callback report, or (depending on timing) the abandoned read's own
    coroutine finalised with its read error."""
    code = getattr(getattr(unraisable, "object", None), "cr_code", None)
    if getattr(code, "co_name", "") == "_read_array_index_and_device_put":
      return True
    frames = traceback.extract_tb(unraisable.exc_traceback)
    return (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"
            and bool(frames) and frames[0].name == "call_soon_threadsafe")

  @staticmethod
  def keep_log_record(record) -> bool:
    message = record.getMessage()
    pending = message.startswith("Task was destroyed but it is pending!") and "orbax" in message
    # The gather of the other reads, failed too, collected without being awaited.
    unretrieved = ("exception was never retrieved" in message
                   and "Encountered error while reading array index" in message)
    return not (pending or unretrieved)


def _first_line(error: BaseException) -> str:
  """The first line of the innermost explicitly chained cause (orbax wraps TensorStore's
  OUT_OF_RANGE / DATA_LOSS errors in a generic one)."""
  while error.__cause__ is not None:
    error = error.__cause__
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0] if lines else ''}"[:500]


def _damaged(manager, step: int, error: BaseException) -> DamagedCheckpointError:
  return DamagedCheckpointError(f"checkpoint step {step} in {manager.directory} is damaged or "
                                f"unreadable: {_first_line(error)}")


def _leaf_shapes(tree) -> dict[tuple, tuple]:
  """{(key, ...): shape} of a pytree's leaves, attribute and dict keys alike."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    key = tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)
    out[key] = tuple(getattr(leaf, "shape", ()))
  return out


def _structure_difference(saved, abstract_state) -> str | None:
  """What differs between the saved tree's metadata and the state to restore, or None."""
  have, want = _leaf_shapes(saved), _leaf_shapes(abstract_state)
  parts = []
  for label, keys in (("missing from the checkpoint", sorted(set(want) - set(have), key=str)),
                      ("not in the state", sorted(set(have) - set(want), key=str))):
    if keys:
      parts.append(f"{len(keys)} leaves {label} (e.g. {'/'.join(map(str, keys[0]))})")
  shapes = [k for k in want if k in have and want[k] != have[k]]
  if shapes:
    k = shapes[0]
    parts.append(f"{len(shapes)} shapes differ (e.g. {'/'.join(map(str, k))}: checkpoint "
                 f"{have[k]}, state {want[k]})")
  return "; ".join(parts) or None


def restore_step(manager, step: int, abstract_state):
  """Restores checkpoint `step` onto the shardings of `abstract_state` (any mesh size).

  `abstract_state` is any pytree of arrays or `jax.ShapeDtypeStruct`s with the saved structure.

  Raises:
    FileNotFoundError: there is no such step.
    ValueError: the checkpoint holds a differently structured state (names both), or
      `DamagedCheckpointError` (a ValueError): its files cannot be read. One line each:
      "checkpoint step 12 in DIR is damaged or unreadable: <first line of the error>".
  """
  _AbandonedReadNoise.install()
  directory = epath.Path(manager.directory)
  if step not in manager.all_steps():
    raise FileNotFoundError(f"No checkpoint step {step} in {directory}; it holds steps "
                            f"{sorted(manager.all_steps())}.")
  try:
    saved = ocp.StandardCheckpointHandler().metadata(directory / str(step) / "state")
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise _damaged(manager, step, e) from e
  difference = _structure_difference(saved, abstract_state)
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))
  except Exception as e:  # pylint: disable=broad-exception-caught
    if difference:  # Not damage: a different state (another optimiser, renamed fields, ...).
      raise ValueError(f"checkpoint step {step} in {directory} holds a differently structured "
                       f"state: {difference}.") from e
    raise _damaged(manager, step, e) from e
  return restored["state"]


def read_meta(manager, step: int) -> dict:
  """The config and signatures saved with `step` (`with_added_model_keys`);
  DamagedCheckpointError if unreadable."""
  try:
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise _damaged(manager, step, e) from e
  return with_added_model_keys(meta)


def restore_state(manager, step: int, abstract_state):
  """`restore_step` under its earlier name."""
  return restore_step(manager, step, abstract_state)


def _move_aside(directory: epath.Path, step: int) -> epath.Path:
  """Moves checkpoint `step` to <directory>/../damaged_checkpoints/<step>[.N]; never deletes."""
  def barrier(name):
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"jaxpose_damaged_checkpoint_{name}")

  barrier(f"{step}_found")  # Every process picks the same free name below.
  damaged = directory.parent / DAMAGED_DIR
  target = damaged / str(step)
  n = 0
  while target.exists():
    n += 1
    target = damaged / f"{step}.{n}"
  if jax.process_index() == 0:
    damaged.mkdir(parents=True, exist_ok=True)
    (directory / str(step)).rename(target)
  barrier(f"{target.name}_moved")
  return target


def restore_latest_intact(manager, abstract_state):
  """Restores the newest readable checkpoint: -> (state, step), or (None, None) if none exists.

  A damaged step (`DamagedCheckpointError`: a truncated array file, a half-synced volume, an
  unreadable `meta`) is moved to <checkpoints dir>/../damaged_checkpoints/<step> (never deleted)
  with a warning naming the step and the error, and the next older step is tried.

  Raises:
    ValueError: every checkpoint is damaged (naming the steps and where they went), or a
      checkpoint holds a differently structured state (nothing is moved then).
  """
  directory = epath.Path(manager.directory)
  damaged = []
  while (step := manager.latest_step()) is not None:
    try:
      state = restore_step(manager, step, abstract_state)
      read_meta(manager, step)  # Resuming and evaluating need its config too.
      return state, step
    except DamagedCheckpointError as e:
      target = _move_aside(directory, step)
      logging.warning("%s; moved it to %s and trying the previous checkpoint.", e, target)
      damaged.append(step)
      manager.reload()
  if damaged:
    raise ValueError(f"Every checkpoint in {directory} is damaged or unreadable (steps "
                     f"{', '.join(map(str, damaged))}, moved to {directory.parent / DAMAGED_DIR})"
                     f"; move an intact one back or use another --workdir.")
  return None, None


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
  _AbandonedReadNoise.install()
  for target in targets:
    reader = manager(directory, read_only=True)  # A fresh manager for each handler.
    try:
      restored = reader.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True)))["state"]
    except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore raise many kinds)
      errors.append(e)
      if "OUT_OF_RANGE" in str(e) or "DATA_LOSS" in str(e):
        break  # Damaged data, not another layout: no second read of the broken files.
      continue
    if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(restored)):
      # A partial restore leaves what the checkpoint lacks as the target's abstract leaves.
      errors.append(ValueError(f"step {step} lacks {sorted(target)} in this layout"))
      continue
    nested = restored.pop("model_state", {})
    return {**restored, **nested}
  raise DamagedCheckpointError(f"checkpoint step {step} in {directory} is damaged or "
                               f"unreadable: {_first_line(errors[0])}")
