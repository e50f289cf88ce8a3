"""The data sets sit below evaluation: no data module imports an upper layer (not even inside a
function, which would still tie the two files together)."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "jaxpose"
UPPER = {"jaxpose.train", "jaxpose.evaluate", "jaxpose.prediction_files", "jaxpose.visualize"}
LOWER = sorted(PACKAGE.glob("data/*.py")) + [
    PACKAGE / name for name in ("metrics.py", "skeletons.py", "annotation_io.py", "drawing.py")]


def _imported(path: pathlib.Path) -> set[str]:
  """Every module `path` imports: `import a.b` -> a.b; `from a import b` -> a and a.b."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f"{node.module}.{alias.name}" for alias in node.names)
  return names


@pytest.mark.parametrize("path", LOWER, ids=lambda p: p.name)
def test_lower_layers_import_no_upper_layer(path):
  assert path.exists(), path
  assert not _imported(path) & UPPER, f"{path} imports {sorted(_imported(path) & UPPER)}"


def test_the_check_sees_imports(tmp_path):
  assert "jaxpose.data.builder_lib" in _imported(PACKAGE / "data" / "mpii.py")
  path = tmp_path / "module.py"
  path.write_text("def f():\n  from jaxpose import visualize\n  import jaxpose.train\n")
  assert _imported(path) & UPPER == {"jaxpose.visualize", "jaxpose.train"}
