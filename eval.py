r"""Evaluates a checkpoint, or another system's prediction file, with the official metrics.

  python eval.py --ckpt runs/qs                       # a workdir: its latest checkpoint
  python eval.py --ckpt runs/qs/checkpoints/3000      # one checkpoint step
  python eval.py --preds FILE --dataset mpii_val --gt ../shared/data/mpii/detections_our_format.mat

Prints the table in the papers' layout (Head Shoulder Elbow Wrist Hip Knee Ankle Total, AUC);
--output_json PATH writes {"table": {column: percent, ..., "AUC": ...}, ...}. With --ckpt it also
writes predictions, PCK-vs-threshold curves and best/worst skeleton overlays (for MPII, the
benchmark's pred_keypoints_mpii.mat) into WORKDIR/eval/<split>_step<step>/.
"""

if __name__ == "__main__":  # Before any large import: it may start the program again.
  from jaxpose import huge_pages  # pylint: disable=g-import-not-at-top
  huge_pages.reexec()

import json
import os

from absl import app
from absl import flags

from jaxpose import runtime

_CKPT = flags.DEFINE_string("ckpt", None, "Workdir or checkpoint step folder to evaluate.")
_PREDS = flags.DEFINE_string("preds", None, "Prediction file (.mat/.h5/.npy/.npz/.json).")
_DATASET = flags.DEFINE_enum("dataset", "mpii_val", ["mpii_val", "lsp_test", "flic_test"],
                             "With --preds: the evaluation split the file predicts.")
_GT = flags.DEFINE_string("gt", None, "With --preds: the official ground-truth file.")
_CONVENTION = flags.DEFINE_enum("convention", "official", ["official", "pytorch-pose", "mmpose"],
                                "Metric convention (MPII); official by default.")
_SPLIT = flags.DEFINE_string("split", None, "With --ckpt: split to evaluate (default: the "
                             "config's evaluation split).")
_FLIP = flags.DEFINE_bool("flip_test", True, "Average with the flipped image's heat maps.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Global evaluation batch size.")
_SCALES = flags.DEFINE_list(
    "scales", [], "With --ckpt, heat-map families: multi-scale testing, e.g. "
    "0.7,0.8,0.9,1,1.1,1.2,1.3 (CPM's release): heat maps of crops at each factor x the "
    "person's box, averaged in the unscaled crop's frame.")
_UPSAMPLE = flags.DEFINE_integer(
    "decode_upsample", None, "With --ckpt, heat-map families: decode each map by bicubic "
    "upsampling by this factor and the argmax (CPM's release: its stride, 8), or 0 for the "
    "argmax with the quarter-pixel shift. Default: the checkpoint's config.", lower_bound=0)
_OUTPUT_JSON = flags.DEFINE_string("output_json", None, "Write the numbers here as JSON.")
_WRITE_OUTPUTS = flags.DEFINE_bool(
    "write_outputs", True, "With --ckpt: also write predictions, PCK curves, best/worst "
    "overlays (and for MPII the benchmark .mat) into WORKDIR/eval/<split>_step<step>/.")
runtime.define_distributed_flags()
runtime.define_output_flags()
# The flags that mean something in one mode only.
_MODE_ONLY = {"preds": ("dataset", "gt"),
              "ckpt": ("split", "scales", "decode_upsample", "write_outputs", "batch_size")}


def _write_json(path, payload):
  with open(path, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=False)


def _parse_scales(values) -> tuple[float, ...]:
  scales = runtime.number_list("scales", values)
  if any(not 0 < f < 10 for f in scales):
    raise app.UsageError(f"--scales={','.join(values)}: factors must be in (0, 10).")
  return scales


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if (_CKPT.value is None) == (_PREDS.value is None):
    raise app.UsageError("Give exactly one of --ckpt or --preds.")
  mode, other = ("preds", "ckpt") if _PREDS.value else ("ckpt", "preds")
  wrong = [f"--{name}" for name in _MODE_ONLY[other] if flags.FLAGS[name].present]
  if wrong:  # Named, not ignored.
    raise app.UsageError(
        f"{', '.join(wrong)} appl{'y' if len(wrong) > 1 else 'ies'} to --{other}, not --{mode}"
        + (" (a checkpoint is evaluated on its config's data set; --split picks the split)"
           if mode == "ckpt" else "") + ".")
  if _OUTPUT_JSON.value:  # Its folder now, not after the evaluation.
    os.makedirs(os.path.dirname(os.path.abspath(_OUTPUT_JSON.value)), exist_ok=True)
  if _PREDS.value is not None:
    from jaxpose import prediction_files  # pylint: disable=g-import-not-at-top
    if _GT.value is None:
      raise app.UsageError("--preds needs --gt, the official ground-truth file.")
    result = prediction_files.evaluate_file(_PREDS.value, _DATASET.value, _GT.value,
                                            _CONVENTION.value)
    print(result.text)
    if _OUTPUT_JSON.value:
      _write_json(_OUTPUT_JSON.value, {"table": result.table, "tables": result.tables,
                                       "dataset": result.dataset,
                                       "convention": result.convention})
    return
  from jaxpose import checkpoints  # pylint: disable=g-import-not-at-top
  workdir = checkpoints.resolve(_CKPT.value)[0].parent  # Names a missing path.
  runtime.setup(log_file=str(workdir / "logs" / "eval.log"))
  from jaxpose import evaluate  # pylint: disable=g-import-not-at-top  (after jax set-up)
  result = evaluate.evaluate_checkpoint(_CKPT.value, split=_SPLIT.value,
                                        flip_test=_FLIP.value, batch_size=_BATCH.value,
                                        convention=_CONVENTION.value,
                                        write_outputs=_WRITE_OUTPUTS.value,
                                        scales=_parse_scales(_SCALES.value),
                                        decode_upsample=_UPSAMPLE.value)
  print(result["text"])
  for path in result["outputs"]:
    print(f"wrote {path}")
  if _OUTPUT_JSON.value:
    _write_json(_OUTPUT_JSON.value, {k: v for k, v in result.items() if k != "text"})


if __name__ == "__main__":
  runtime.run_main(main, "eval.py")
