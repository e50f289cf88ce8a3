"""Drawing helpers: skeleton overlays, image grids, PNG output and PCK curves.

Everything works on numpy arrays and PIL; matplotlib is used only by `plot_pck_curves`,
through its Agg canvas (no pyplot, no global backend switch). The array primitives live in
`jaxpose.drawing` (lower down, so the data sets can draw too) and are re-exported here.
"""

import os
from collections.abc import Mapping

import numpy as np

from jaxpose import drawing

LEFT_COLOUR = drawing.LEFT_COLOUR
RIGHT_COLOUR = drawing.RIGHT_COLOUR
CENTRE_COLOUR = drawing.CENTRE_COLOUR
HEAD_BOX_COLOUR = drawing.HEAD_BOX_COLOUR
to_uint8 = drawing.to_uint8
draw_skeleton = drawing.draw_skeleton
image_grid = drawing.image_grid
save_png = drawing.save_png


def plot_pck_curves(
    thresholds: np.ndarray,
    curves: Mapping[str, np.ndarray],
    path: str,
    title: str,
    xlabel: str = "normalised distance threshold",
) -> None:
  """Writes a PNG of PCK against the normalised threshold, one line per joint group.

  Args:
    thresholds: [T] thresholds (fractions of the normaliser, e.g. 0 ... 0.5).
    curves: group name -> [T] PCK values, in percent (fractions in [0, 1] are scaled).
    path: output PNG path.
    title: plot title.
  """
  # Imported here so that the rest of the module does not pay for matplotlib.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  thresholds = np.asarray(thresholds, np.float64)
  values = {name: np.asarray(curve, np.float64) for name, curve in curves.items()}
  for name, curve in values.items():
    if curve.shape != thresholds.shape:
      raise ValueError(f"Curve {name!r} has shape {curve.shape}, thresholds {thresholds.shape}.")
  as_fraction = all(np.nanmax(c, initial=0.0) <= 1.0 for c in values.values())

  figure = Figure(figsize=(6, 4.5), dpi=100)
  FigureCanvasAgg(figure)
  axes = figure.add_subplot(1, 1, 1)
  for name, curve in values.items():
    axes.plot(thresholds, curve * 100.0 if as_fraction else curve, label=name, linewidth=1.5)
  axes.set_xlim(float(thresholds.min(initial=0.0)), float(thresholds.max(initial=0.0)) or 1.0)
  axes.set_ylim(0, 100)
  axes.set_xlabel(xlabel)
  axes.set_ylabel("detection rate (%)")
  axes.set_title(title)
  axes.grid(True, alpha=0.3)
  if values:
    axes.legend(loc="lower right", fontsize=8)
  figure.tight_layout()
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  figure.savefig(path, format="png")
