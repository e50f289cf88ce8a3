r"""Trains a pose model.

  python train.py --config configs/quickstart.py --workdir runs/qs
  python train.py --config configs/hourglass_mpii.py --workdir runs/hg8 \
      --config.batch_size=12 --config.mixed_precision=bfloat16

Re-running the same command resumes from the workdir's latest checkpoint. On several hosts run
the same command on each (TPU pods are detected; elsewhere pass --coordinator_address,
--num_processes and --process_id, or set JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID).
"""

import os

if __name__ == "__main__":  # Before any large import: it may start the program again.
  from jaxpose import huge_pages  # pylint: disable=g-import-not-at-top
  huge_pages.reexec()

from absl import app
from absl import flags
from ml_collections import config_flags

from jaxpose import runtime

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (ml_collections).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and summaries.")
_ALLOW_INEXACT = flags.DEFINE_bool(
    "allow_inexact_resume", False, "Resume even though the recipe (optimiser, schedule, batch "
    "size, seed, augmentation, ...) differs from the checkpoint's; the run is then not "
    "bit-exact with an uninterrupted one.")
flags.mark_flags_as_required(["config", "workdir"])
runtime.define_distributed_flags()
runtime.define_output_flags()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = runtime.loaded_config(_CONFIG)  # Before the workdir is touched.
  runtime.setup(log_file=os.path.join(_WORKDIR.value, "logs", "train.log"))
  from jaxpose import train  # pylint: disable=g-import-not-at-top  (after jax set-up)
  train.train_and_evaluate(config, _WORKDIR.value,
                           allow_inexact_resume=_ALLOW_INEXACT.value)


if __name__ == "__main__":
  runtime.run_main(main, "train.py", flags_parser=runtime.config_flags_parser("train.py"))
