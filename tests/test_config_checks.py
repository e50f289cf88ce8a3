"""Tests for jaxpose.config_checks: every shipped config passes, every bad value is named."""

import re

import ml_collections
import pytest

from configs import hourglass2_mpii
from configs import hourglass_lsp
from configs import hourglass_mpii
from configs import quickstart
from jaxpose import config_checks


def _set(config, key: str, value):
  *parents, leaf = key.split(".")
  node = config
  for p in parents:
    node = node[p]
  with node.ignore_type():
    node[leaf] = value
  return config


@pytest.mark.parametrize("get_config,arg", [
    (hourglass_mpii.get_config, None), (hourglass_mpii.get_config, "2"),
    (hourglass2_mpii.get_config, None), (hourglass_lsp.get_config, None),
    (quickstart.get_config, None), (quickstart.get_config, "tiny")])
def test_shipped_configs_pass(get_config, arg):
  config_checks.check_config(get_config(arg))


BAD = [
    ("batch_size", 0), ("batch_size", -8), ("batch_size", 2.5), ("eval_batch_size", 0),
    ("optimizer.learning_rate", -1.0), ("optimizer.learning_rate", 0.0),
    ("optimizer.learning_rate", float("nan")), ("optimizer.learning_rate", float("inf")),
    ("num_train_steps", 0), ("log_every_steps", 0), ("eval_every_steps", -1),
    ("checkpoint_every_steps", 0), ("keep_checkpoints", 0), ("input_size", 0),
    ("output_size", -64), ("sigma", 0.0), ("sigma", float("nan")), ("augment.scale", -0.25),
    ("augment.scale", 1.0), ("augment.rotation", -30.0), ("augment.color", -0.2),
    ("augment.color", 1.5), ("augment.rotation_prob", 1.5), ("augment.rotation_prob", -0.1),
    ("augment.flip", 2.0), ("optimizer.warmup_steps", -1), ("optimizer.decay_factor", 0.0),
    ("optimizer.decay_factor", -0.1), ("dataset.precrop_format", "png"),
]


@pytest.mark.parametrize("get_config", [hourglass_mpii.get_config, quickstart.get_config])
@pytest.mark.parametrize("key,value", BAD)
def test_bad_value_is_named(get_config, key, value):
  config = _set(get_config(), key, value)
  with pytest.raises(ValueError) as e:
    config_checks.check_config(config)
  message = str(e.value)
  assert f"config.{key}={value!r} (must be " in message
  assert "\n" not in message and message.count("config.") == 1


def test_num_epochs_is_checked_only_when_used():
  config = _set(hourglass_mpii.get_config(), "num_epochs", 0)  # num_train_steps = -1.
  with pytest.raises(ValueError, match=r"config\.num_epochs=0 .*num_train_steps <= 0"):
    config_checks.check_config(config)
  config_checks.check_config(_set(quickstart.get_config(), "num_epochs", 0))  # 7000 steps.
  config = _set(quickstart.get_config(), "num_epochs", -1)
  with pytest.raises(ValueError, match=r"config\.num_epochs=-1"):
    config_checks.check_config(_set(config, "num_train_steps", -1))


def test_every_problem_in_one_line():
  config = quickstart.get_config("tiny")
  config.batch_size = 0
  config.optimizer.learning_rate = -1.0
  config.augment.rotation_prob = 2.0
  with pytest.raises(ValueError) as e:
    config_checks.check_config(config)
  assert re.fullmatch(r"Invalid config: config\.batch_size=0 \(must be an integer > 0\); "
                      r"config\.optimizer\.learning_rate=-1\.0 \(must be a finite number > 0\); "
                      r"config\.augment\.rotation_prob=2\.0 \(must be a probability in "
                      r"\[0, 1\]\)\.", str(e.value))


def test_missing_keys_are_skipped_and_family_rules_added():
  config = ml_collections.ConfigDict({"batch_size": 4, "optimizer": {"name": "sgd"},
                                      "augment": None, "num_stages": 0})
  config_checks.check_config(config)  # No learning_rate, sigma, augment fields, ...
  config_checks.check_config({"batch_size": 4, "sigma": None})  # Plain dicts, None skipped.
  with pytest.raises(ValueError, match=r"config\.batch_size=0"):
    config_checks.check_config({"batch_size": 0, "optimizer": "adam"})
  rules = config_checks.RULES + (
      config_checks.Rule("num_stages", config_checks.positive_int, "an integer > 0"),)
  with pytest.raises(ValueError, match=r"config\.num_stages=0 \(must be an integer > 0\)"):
    config_checks.check_config(config, rules)


def test_lookup():
  config = hourglass_mpii.get_config()
  assert config_checks.lookup(config, "optimizer.learning_rate") == 2.5e-4
  assert config_checks.lookup(config, "optimizer.nope") is None
  assert config_checks.lookup(config, "loss.kind") is None  # "mse" is a leaf.
  assert config_checks.lookup({"a": {"b": 3}}, "a.b") == 3


def test_precrop_formats_are_the_pipelines():
  from jaxpose.data import pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow)
  config = hourglass_mpii.get_config()
  for image_format in pipeline.IMAGE_FORMATS:
    config_checks.check_config(_set(config, "dataset.precrop_format", image_format))
