"""Training survives SIGKILL (even mid-save), stops cleanly on SIGTERM and on a NaN loss."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import quickstart
from jaxpose import evaluate
from jaxpose import parallel
from jaxpose import train
from jaxpose.data import datasets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6


def _config(data_dir, **overrides):
  c = quickstart.get_config("tiny")
  c.dataset.data_dir = str(data_dir)
  c.num_train_steps = STEPS
  c.checkpoint_every_steps = 1
  c.eval_every_steps = 1000  # Only the final evaluation.
  for k, v in overrides.items():
    c[k] = v
  return c


def _train_cmd(workdir, data_dir):
  return [sys.executable, "train.py", "--config", "configs/quickstart.py:tiny",
          "--workdir", str(workdir), f"--config.dataset.data_dir={data_dir}",
          f"--config.num_train_steps={STEPS}", "--config.checkpoint_every_steps=1",
          "--config.eval_every_steps=1000"]


def _start(workdir, data_dir):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  log = open(workdir.parent / f"{workdir.name}.log", "a")  # pylint: disable=consider-using-with
  return subprocess.Popen(_train_cmd(workdir, data_dir), cwd=REPO, env=env, stdout=log,
                          stderr=subprocess.STDOUT)


def _steps(workdir) -> list[int]:
  d = workdir / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def _in_flight(workdir) -> bool:
  """An orbax save is under way: a temporary (non-numeric) step folder exists."""
  d = workdir / "checkpoints"
  return d.exists() and any(not p.name.isdigit() for p in d.iterdir())


def _wait_for(proc, predicate, timeout=120.0, poll=0.002) -> bool:
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if predicate():
      return True
    time.sleep(poll)
  return False


def _variables(path):
  _, _, variables, step = evaluate.load_checkpoint(str(path), parallel.make_mesh())
  return jax.device_get(variables), step


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """The tiny synthetic data set, built."""
  tmp = tmp_path_factory.mktemp("data") / "tfds"
  datasets.prepare(_config(tmp).dataset)
  return tmp


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
  """An uninterrupted run (in-process) on `data_dir`, checkpointed at steps 2, 4 and 6: its
  workdir."""
  work = tmp_path_factory.mktemp("reference") / "work"
  train.train_and_evaluate(_config(data_dir, checkpoint_every_steps=2), str(work))
  return work


def test_sigkill_mid_save_and_sigterm_resume_bit_exact(data_dir, reference, tmp_path):
  work = tmp_path / "work"

  # 1. SIGKILL while a checkpoint save is in flight (a temporary step folder exists).
  proc = _start(work, data_dir)
  # Saves are asynchronous and take a few hundred ms each, six of them: one is always seen.
  assert _wait_for(proc, lambda: _in_flight(work)), (work.parent / "work.log").read_text()[-3000:]
  proc.send_signal(signal.SIGKILL)
  assert proc.wait(60) == -signal.SIGKILL
  killed_at = _steps(work)

  # 2. SIGKILL again at a random moment after start-up.
  proc = _start(work, data_dir)
  time.sleep(np.random.default_rng().uniform(2.0, 8.0))
  if proc.poll() is None:
    proc.send_signal(signal.SIGKILL)
  proc.wait(60)

  # 3. SIGTERM once the loop has started: saves at the next step and exits 0.
  before = _steps(work)
  log_path = work.parent / "work.log"
  seen = len(log_path.read_text()) if log_path.exists() else 0
  proc = _start(work, data_dir)
  assert _wait_for(proc, lambda: "Training hourglass for" in log_path.read_text()[seen:],
                   poll=0.01), log_path.read_text()[-3000:]
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(120) == 0, log_path.read_text()[-3000:]
  log = log_path.read_text()[seen:]
  if not before or before[-1] < STEPS:  # Steps were left to run: the signal must have acted.
    assert "SIGTERM received" in log, log[-3000:]
    stopped = int(log.rsplit("Saved step ", 1)[1].split()[0])
    assert "after SIGTERM" in log and _steps(work)[-1] == stopped

  # 4. Run to the end with the same command.
  proc = _start(work, data_dir)
  assert proc.wait(180) == 0, (work.parent / "work.log").read_text()[-3000:]
  assert _steps(work)[-1] == STEPS, killed_at

  want, s1 = _variables(reference)
  got, s2 = _variables(work)
  assert s1 == s2 == STEPS
  jax.tree.map(np.testing.assert_array_equal, want, got)  # Bit for bit.
  for step in _steps(work):  # Every checkpoint left is readable.
    _, s = _variables(work / "checkpoints" / str(step))
    assert s == step
  assert not _in_flight(work)


def test_nan_loss_stops_naming_step_and_metric_and_keeps_last_checkpoint(data_dir, reference,
                                                                          tmp_path):
  work = tmp_path / "work"
  (work / "checkpoints").mkdir(parents=True)  # The reference's step-4 checkpoint, then NaNs.
  shutil.copytree(reference / "checkpoints" / "4", work / "checkpoints" / "4")
  good, _ = _variables(work)
  files = {p: p.stat().st_mtime_ns for p in (work / "checkpoints" / "4").rglob("*")}
  bad = _config(data_dir, checkpoint_every_steps=6, log_every_steps=2)
  bad.optimizer.learning_rate = 1e30
  bad.optimizer.warmup_steps = 0
  with pytest.raises(train.NonFiniteLossError, match=r"Non-finite \w+=\S+ at step [56]"):
    train.train_and_evaluate(bad, str(work), allow_inexact_resume=True)  # Another recipe.
  assert _steps(work) == [4]  # Nothing saved after the NaN.
  after, _ = _variables(work)
  jax.tree.map(np.testing.assert_array_equal, good, after)
  assert {p: p.stat().st_mtime_ns for p in (work / "checkpoints" / "4").rglob("*")} == files


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_sigterm_to_one_of_two_processes_saves_on_both(data_dir, tmp_path):
  """A preemption notice to process 1 only: both processes save the same step and exit 0
  (with a per-process flag, process 1 would enter the collective save alone and both hang)."""
  work = tmp_path / "work"
  port = _free_port()
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  cmd = _train_cmd(work, data_dir)
  cmd[cmd.index(f"--config.num_train_steps={STEPS}")] = "--config.num_train_steps=100000"
  cmd[cmd.index("--config.checkpoint_every_steps=1")] = "--config.checkpoint_every_steps=100000"
  cmd += ["--config.log_every_steps=2", f"--coordinator_address=127.0.0.1:{port}",
          "--num_processes=2"]
  logs = [tmp_path / f"p{i}.log" for i in range(2)]
  procs = [subprocess.Popen(cmd + [f"--process_id={i}"], cwd=REPO, env=env,
                            stdout=open(logs[i], "w"), stderr=subprocess.STDOUT)
           for i in range(2)]
  try:
    deadline = time.time() + 240
    while time.time() < deadline and "step 4/" not in logs[0].read_text():  # Chief logs.
      assert all(p.poll() is None for p in procs), logs[0].read_text()[-3000:]
      time.sleep(0.2)
    assert "step 4/" in logs[0].read_text(), logs[0].read_text()[-3000:]
    procs[1].send_signal(signal.SIGTERM)
    codes = [p.wait(90) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  texts = [log.read_text() for log in logs]
  assert codes == [0, 0], [t[-2000:] for t in texts]
  stopped = [int(t.rsplit("Saved step ", 1)[1].split()[0]) for t in texts]
  assert stopped[0] == stopped[1] and _steps(work) == [stopped[0]]
  _, step = _variables(work)
  assert step == stopped[0]
