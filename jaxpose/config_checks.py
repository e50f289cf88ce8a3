"""Value checks on a training config, before anything expensive starts.

`check_config(config)` refuses values that would otherwise fail deep inside TensorFlow or orbax
(`batch_size=0`), or train silently to nothing (`optimizer.learning_rate=-1`), with one line
naming every bad key and its value:

  ValueError: Invalid config: config.batch_size=0 (must be an integer > 0);
  config.optimizer.learning_rate=-1.0 (must be a finite number > 0).

The checks are a table of (dotted key, predicate, requirement). Only keys present in the config
are checked (a key that is missing or None is skipped), so model families with fields of their
own, or configs without some of these, pass through; a family adds rows for its own fields.
"""

import math
import numbers
from typing import Any, Callable, NamedTuple


class Rule(NamedTuple):
  key: str  # Dotted path in the config, e.g. "optimizer.learning_rate".
  ok: Callable[[Any], bool]  # The value is acceptable.
  requirement: str  # What `ok` asks for, completing "must be ...".
  applies: Callable[[Any], bool] = lambda config: True  # The key is used by this config.


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def positive_int(v) -> bool:
  return _is_int(v) and v > 0


def non_negative_int(v) -> bool:
  return _is_int(v) and v >= 0


def positive(v) -> bool:
  return _is_real(v) and v > 0


def non_negative(v) -> bool:
  return _is_real(v) and v >= 0


def probability(v) -> bool:
  """A probability in [0, 1]; a bool (flip on/off) counts as 0 or 1."""
  return isinstance(v, bool) or (_is_real(v) and 0 <= v <= 1)


def _steps_unset(config) -> bool:
  """num_epochs is used only when num_train_steps does not override it (<= 0)."""
  steps = lookup(config, "num_train_steps")
  return steps is None or (_is_real(steps) and steps <= 0)


POSITIVE_INT = "an integer > 0"
NON_NEGATIVE_INT = "an integer >= 0"
RULES = (
    Rule("batch_size", positive_int, POSITIVE_INT),
    Rule("eval_batch_size", positive_int, POSITIVE_INT),
    Rule("optimizer.learning_rate", positive, "a finite number > 0"),
    Rule("optimizer.warmup_steps", non_negative_int, NON_NEGATIVE_INT),
    Rule("optimizer.decay_factor", positive, "a finite number > 0"),
    Rule("num_train_steps", lambda v: _is_int(v) and v != 0,
         "an integer > 0, or < 0 to train for num_epochs"),
    Rule("num_epochs", positive, "a finite number > 0 (num_train_steps <= 0 uses it)",
         _steps_unset),
    Rule("log_every_steps", positive_int, POSITIVE_INT),
    Rule("eval_every_steps", positive_int, POSITIVE_INT),
    Rule("checkpoint_every_steps", positive_int, POSITIVE_INT),
    Rule("keep_checkpoints", positive_int, "an integer >= 1"),
    Rule("precise_bn_batches", non_negative_int, NON_NEGATIVE_INT),
    Rule("input_size", positive_int, POSITIVE_INT),
    Rule("output_size", positive_int, POSITIVE_INT),
    Rule("sigma", positive, "a finite number > 0"),
    Rule("augment.rotation", lambda v: non_negative(v) and v <= 180,
         "in [0, 180] degrees"),
    Rule("augment.rotation_prob", probability, "a probability in [0, 1]"),
    Rule("augment.scale", lambda v: non_negative(v) and v < 1,
         "in [0, 1): scale factors are drawn from [1 - scale, 1 + scale]"),
    Rule("augment.color", lambda v: non_negative(v) and v <= 1,
         "in [0, 1]: colour gains are drawn from [1 - color, 1 + color]"),
    Rule("augment.flip", probability, "a bool or a probability in [0, 1]"),
    # pipeline.IMAGE_FORMATS (this module imports no TensorFlow; a test keeps them equal).
    Rule("dataset.precrop_format", lambda v: v in ("jpeg", "raw"), 'one of "jpeg", "raw"'),
)


def lookup(config, key: str):
  """config["a"]["b"] for key "a.b" (ConfigDict or dict); None when any part is missing."""
  node = config
  for part in key.split("."):
    try:
      if part not in node:
        return None
      node = node[part]
    except TypeError:  # A leaf where a sub-config was expected.
      return None
  return node


def check_config(config, rules=RULES) -> None:
  """Raises ValueError naming every key of `config` whose value breaks its rule.

  Args:
    config: an ml_collections.ConfigDict (or a nested dict, e.g. a checkpoint's stored config).
    rules: the `Rule`s to apply; defaults to `RULES` (families may pass RULES + their own).
  """
  problems = []
  for rule in rules:
    value = lookup(config, rule.key)
    if value is None or not rule.applies(config):
      continue
    if not rule.ok(value):
      problems.append(f"config.{rule.key}={value!r} (must be {rule.requirement})")
  if problems:
    raise ValueError("Invalid config: " + "; ".join(problems) + ".")
