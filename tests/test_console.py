"""What a person sees: train.py and eval.py print their own lines (progress, tables, where
files went); the libraries' INFO lines and TensorFlow's start-up notices go to the log file."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY_NOISE = ("oneDNN", "absl::InitializeLog", " INFO ", "orbax", "Constructing tf.data")


def _run(args, env=None):
  proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                        timeout=300, env={**os.environ, **(env or {})})
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout + proc.stderr


def test_train_and_eval_print_only_their_own_lines(tmp_path):
  workdir = tmp_path / "w"
  data = f"--config.dataset.data_dir={tmp_path / 'tfds'}"
  train_out = _run(["train.py", "--config", "configs/quickstart.py:tiny", "--workdir",
                    str(workdir), data])
  # Into one file with stdout (`> log 2>&1`), as bytes: text mode would turn \r into \n.
  merged = subprocess.run([sys.executable, "eval.py", "--ckpt", str(workdir)], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
  assert merged.returncode == 0, merged.stdout[-3000:]
  eval_out = merged.stdout.decode()
  for out in (train_out, eval_out):
    noise = [line for line in out.replace("\r", "\n").splitlines()
             if any(n in line for n in LIBRARY_NOISE)]
    assert not noise, noise
  assert len(train_out.splitlines()) < 40, train_out
  assert "Total" in eval_out
  # The evaluation over the split shows a progress bar with a rate and an ETA; the finished
  # bar ends with a newline: the next line starts its own.
  assert "evaluate synthetic" in eval_out and "image/s" in eval_out
  assert any(line.startswith("Evaluated ") for line in eval_out.split("\n")), eval_out[-2000:]
  quiet = _run(["eval.py", "--ckpt", str(workdir)], env={"JAXPOSE_PROGRESS": "0"})
  assert "Total" in quiet and "image/s" not in quiet
  log = (workdir / "logs" / "train.log").read_text()
  assert "oneDNN custom operations" in log  # Kept, in the log file.


def test_verbose_shows_the_library_lines(tmp_path):
  out = _run(["-c", "from absl import app, flags\n"
              "from jaxpose import runtime\n"
              "runtime.define_output_flags()\n"
              "app.run(lambda argv: runtime.setup())", "--verbose"])
  assert "oneDNN custom operations" in out


def test_clean_errors_make_input_errors_and_ctrl_c_one_line(monkeypatch, capsys):
  """runtime.clean_errors: a bad path or value exits with one line naming it, Ctrl-C with one
  line and status 130; JAXPOSE_TRACEBACK=1 lets either through."""
  from jaxpose import runtime  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv("JAXPOSE_TRACEBACK", raising=False)

  def failing(error):
    def main(argv):
      raise error
    return runtime.clean_errors(main, "prog.py")

  with pytest.raises(SystemExit) as e:
    failing(NotADirectoryError("Not a directory: '/x/file/w'"))([])
  assert e.value.code == "prog.py: error: NotADirectoryError: Not a directory: '/x/file/w'"
  with pytest.raises(SystemExit) as e:
    failing(KeyboardInterrupt())([])
  assert e.value.code == 130
  assert capsys.readouterr().err.strip() == "prog.py: interrupted (Ctrl-C)."
  monkeypatch.setenv("JAXPOSE_TRACEBACK", "1")
  with pytest.raises(KeyboardInterrupt):
    failing(KeyboardInterrupt())([])
