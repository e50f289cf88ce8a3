"""Builds MPII, LSP or FLIC from their official files: the command line.

  python -m jaxpose.data.prepare mpii --manual_dir ~/data/mpii [--data_dir ~/tensorflow_datasets]
  python -m jaxpose.data.prepare lsp --manual_dir ~/data/lsp --config extended
  python -m jaxpose.data.prepare flic --manual_dir ~/data/FLIC

What each data set needs in its manual folder is in docs/DATA.md (and in the error that a
missing file raises). The builders are `mpii.MpiiPose`, `lsp.LspPose` and `flic.FlicPose`;
what they share is in `builder_lib`.
"""

import argparse
import os
import time
from collections.abc import Sequence

from jaxpose.data import builder_lib
from jaxpose.data import datasets


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("name", choices=tuple(datasets.MANUAL_BUILDERS))
  parser.add_argument("--manual_dir", default=None,
                      help="Folder with the downloaded files (default: "
                           "DATA_DIR/downloads/manual/NAME).")
  parser.add_argument("--data_dir", default=datasets.DEFAULT_DATA_DIR,
                      help="TFDS data directory the data set is written to.")
  parser.add_argument("--config", default="default",
                      help="Builder config: mpii: default|hourglass|mmpose; "
                           "lsp: default|observer_centric|extended; flic: default.")
  args = parser.parse_args(argv)
  data_dir = os.path.expanduser(args.data_dir)
  manual_dir = args.manual_dir or builder_lib.default_manual_dir(data_dir, args.name)
  start = time.perf_counter()
  builder = datasets.get_builder(args.name, args.config, data_dir, manual_dir)
  try:
    builder_lib.download_and_prepare(
        builder, download_config=builder_lib.download_config(manual_dir))
  except (FileNotFoundError, builder_lib.AnnotationError, builder_lib.ImageError) as e:
    raise SystemExit(f"Cannot build {args.name}: {e}") from None
  sizes = ", ".join(f"{split} {info.num_examples}" for split, info in builder.info.splits.items())
  print(f"Built {builder.info.full_name} from {manual_dir} into {builder.data_dir} in "
        f"{time.perf_counter() - start:.0f} s: {sizes} people.")


if __name__ == "__main__":
  from jaxpose import runtime  # pylint: disable=g-import-not-at-top
  runtime.exit_without_teardown(main)
