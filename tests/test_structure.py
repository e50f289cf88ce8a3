"""The package's import graph (read from the source with ast): no cycles, no upward imports."""

import ast
import graphlib
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "jaxpose"

# Lower layers may not import the modules listed against them (deferred imports count too).
UPPER = {"jaxpose.train", "jaxpose.evaluate", "jaxpose.prediction_files", "jaxpose.visualize",
         "jaxpose.families", "jaxpose.checkpoints", "jaxpose.predict", "jaxpose.export"}
LOWER_PREFIXES = ("jaxpose.metrics", "jaxpose.skeletons", "jaxpose.codecs", "jaxpose.models",
                  "jaxpose.data", "jaxpose.annotation_io", "jaxpose.drawing")


def _modules() -> dict[str, pathlib.Path]:
  mods = {}
  for path in PACKAGE.rglob("*.py"):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts.pop()
    mods[".".join(parts)] = path
  return mods


def _imported_names(module: str, path: pathlib.Path):
  """Every dotted name an import statement anywhere in the file may refer to."""
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        package = module.split(".")
        package = package[:len(package) - node.level + (path.name == "__init__.py")]
        base = ".".join(package + ([node.module] if node.module else []))
      yield base
      yield from (f"{base}.{a.name}" for a in node.names)


def import_graph() -> dict[str, set[str]]:
  """module -> the package's modules it imports (the package root itself left out)."""
  mods = _modules()
  graph = {}
  for module, path in mods.items():
    deps = set()
    for name in _imported_names(module, path):
      while name and name not in mods:
        name = name.rpartition(".")[0]
      if name and name not in (module, "jaxpose"):
        deps.add(name)
    graph[module] = deps
  return graph


def test_the_graph_sees_the_package():
  graph = import_graph()
  assert "jaxpose.train" in graph and "jaxpose.data.pipeline" in graph
  assert "jaxpose.families" in graph["jaxpose.train"]


def test_no_import_cycles():
  try:
    tuple(graphlib.TopologicalSorter(import_graph()).static_order())
  except graphlib.CycleError as e:
    pytest.fail(f"import cycle: {' -> '.join(e.args[1])}")


def test_cycle_detection_would_fire():
  with pytest.raises(graphlib.CycleError):
    tuple(graphlib.TopologicalSorter({"a": {"b"}, "b": {"a"}}).static_order())


def test_a_deferred_upward_import_would_be_seen(tmp_path):
  path = tmp_path / "module.py"
  path.write_text("def f():\n  from jaxpose import visualize\n  import jaxpose.train\n")
  names = set(_imported_names("jaxpose.data.module", path))
  assert {"jaxpose.visualize", "jaxpose.train"} <= names


def test_lower_layers_do_not_import_upper_ones():
  bad = [f"{m} imports {d}" for m, deps in import_graph().items()
         if m.startswith(LOWER_PREFIXES) for d in deps if d in UPPER]
  assert not bad, bad


_STEP_WITHOUT_TENSORFLOW = """
import sys
import jax, numpy as np
from configs import quickstart
from jaxpose import families, optim, parallel, steps
from jaxpose.models import cpm, deeppose, hourglass, ief, tompson

config = quickstart.get_config("cpm-tiny")
family = families.create_family(config)
mesh = parallel.make_mesh()
phase = optim.phases(config, 64)[0]
tx = steps.create_optimizer(config, 64, phase, layer_groups=family.layer_groups)
state = steps.create_train_state(family, tx, jax.random.key(0), mesh)
train_step = steps.make_train_step(family, mesh, phase, config.update_apart,
                                   config.segmented_step)
n, size = config.batch_size, config.input_size
rng = np.random.default_rng(0)
batch = {"image": rng.uniform(-0.5, 0.5, (n, size, size, 3)).astype(np.float32),
         "joints": rng.uniform(8, size - 8, (n, 16, 2)).astype(np.float32),
         "visible": np.ones((n, 16), np.float32)}
new_state, metrics = train_step(state, batch, jax.random.key(1))
assert np.isfinite(float(metrics["loss"])), metrics
assert int(new_state.step) == 1
assert "tensorflow" not in sys.modules, "tensorflow was imported"
"""


def test_the_train_step_runs_without_tensorflow():
  """README's "in your own JAX loop" snippet: the models, families and the train step (and the
  benchmark's processes) do not pay for TensorFlow's import (~4.5 s, ~530 MB of RSS), even
  while training: only train.py's input pipeline needs it."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  proc = subprocess.run([sys.executable, "-c", _STEP_WITHOUT_TENSORFLOW], cwd=PACKAGE.parent,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
