r"""Keypoints of the person in each photo, from a checkpoint of any family.

  python predict.py --ckpt runs/qs photo.jpg                      # whole image = the person
  python predict.py --ckpt runs/qs photo.jpg --box 120,40,380,620 --out preds/
  python predict.py --ckpt runs/qs photos/                        # every image in a folder

Writes, per image, OUT/<name>.json (keypoints in original-image pixels with a confidence per
joint) and OUT/<name>.png (the skeleton drawn on the photo). An unreadable image is reported by
name and skipped; the others are still written (none readable: an error). Before any work,
inputs that would write the same outputs (photo.jpg and photo.png, or one name in two folders)
and outputs that would replace an input (--out the photos' folder) are refused, naming them.
In Python: jaxpose.predict.Predictor.
"""


from absl import app
from absl import flags

from jaxpose import person as person_lib
from jaxpose import runtime

_CKPT = flags.DEFINE_string("ckpt", None, "Workdir or checkpoint step folder.")
_OUT = flags.DEFINE_string("out", "predictions", "Folder for the JSON and PNG files.")
_BOX = flags.DEFINE_list("box", None, "x0,y0,x1,y1 of the person (the same for every image).")
_CENTER = flags.DEFINE_list("center", None, "cx,cy of the person (with --scale).")
_SCALE = flags.DEFINE_float("scale", None, "Crop side / 200 around --center.")
_FLIP = flags.DEFINE_bool("flip_test", True, "Average with the mirrored image's prediction.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Images per jitted batch.", lower_bound=1)
flags.mark_flag_as_required("ckpt")
runtime.define_output_flags()


def _person_of():
  """image -> where to crop it (the box, the centre and scale, or the whole image), from the
  flags, checked before the libraries load (a usage error is then reported in under a second,
  not after TensorFlow's and JAX's imports)."""
  if _BOX.value:
    try:
      person = person_lib.Person.from_box(runtime.number_list("box", _BOX.value, 4))
    except ValueError as e:  # Person.from_box's own words: the order it expects.
      raise app.UsageError(f"--box={','.join(_BOX.value)}: {e}") from None
    return lambda image: person
  if _CENTER.value or _SCALE.value is not None:
    if not (_CENTER.value and _SCALE.value is not None):
      raise app.UsageError("--center cx,cy and --scale s go together.")
    if not _SCALE.value > 0:
      raise app.UsageError(f"--scale={_SCALE.value}: must be > 0 (crop side / 200).")
    person = person_lib.Person(runtime.number_list("center", _CENTER.value, 2),
                               _SCALE.value)
    return lambda image: person
  return lambda image: person_lib.Person.whole_image(*image.shape[:2])


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("Give at least one image or folder.")
  person_of = _person_of()
  runtime.setup()  # Libraries quiet; --verbose shows them.
  from jaxpose import predict as predict_lib  # pylint: disable=g-import-not-at-top
  from jaxpose import progress  # pylint: disable=g-import-not-at-top
  paths = predict_lib.expand_paths(argv[1:])
  if not paths:
    raise app.UsageError(f"No images ({', '.join(predict_lib.IMAGE_SUFFIXES)}) in "
                         f"{' '.join(argv[1:])}.")
  predict_lib.check_outputs(_OUT.value, paths)
  predictor = predict_lib.Predictor(_CKPT.value, flip_test=_FLIP.value,
                                    batch_size=_BATCH.value)
  skipped, written = [], 0
  chunks = [paths[i:i + predictor.batch_size] for i in range(0, len(paths), predictor.batch_size)]
  with progress.bar(len(paths), "predict") as bar:
    for chunk in chunks:
      images, people, kept = [], [], []
      for path in chunk:
        try:
          image = predict_lib.read_image(path)
        except ValueError as e:
          skipped.append(str(e))
          progress.write(f"skipped {e}")
          continue
        images.append(image)
        people.append(person_of(image))
        kept.append(path)
      if images:
        joints, scores = predictor.predict_many(images, people)
        for path, image, person, j, s in zip(kept, images, people, joints, scores):
          predict_lib.write_outputs(_OUT.value, path, image, j, s, predictor.skeleton, person)
          written += 1
      bar.update(len(chunk))
  print(f"wrote {written} x (.json, .png) into {_OUT.value}"
        + (f"; skipped {len(skipped)} unreadable" if skipped else ""))
  if not written:
    raise ValueError(f"None of the {len(paths)} images could be read.")


if __name__ == "__main__":
  runtime.run_main(main, "predict.py")
