"""Process set-up shared by the entry points (flags, distributed runtime, caches, TF) and
their end (`exit_without_teardown`)."""

import atexit
import contextlib
import functools
import gc
import io
import os
import re
import sys
import tempfile
import threading
import typing

# TensorFlow's C++ INFO lines (oneDNN notices, ...) stay off the console; set it to 0 to see
# them. Before anything imports TensorFlow.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app
from absl import flags
from absl import logging as absl_logging
import jax

from jaxpose import host_memory

_COORDINATOR = None
_NUM_PROCESSES = None
_PROCESS_ID = None


def define_distributed_flags():
  global _COORDINATOR, _NUM_PROCESSES, _PROCESS_ID
  _COORDINATOR = flags.DEFINE_string(
      "coordinator_address", None, "host:port of process 0 for multi-process runs.")
  _NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
  _PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


_VERBOSE = None


def define_output_flags():
  global _VERBOSE
  _VERBOSE = flags.DEFINE_bool(
      "verbose", False, "Also print the libraries' INFO and WARNING lines (orbax, TFDS, JAX, "
      "CLU), which otherwise go only to the log file.")


def setup(log_file: str | None = None) -> None:
  """A quiet console (jaxpose's own lines; the libraries' only from ERROR up, all of them in
  `log_file` when given, or on the console with --verbose), TensorFlow without accelerators
  (input pipeline only), the persistent XLA compilation cache, the compiler's freed heap
  given back after each compilation (host_memory), and the distributed runtime when asked."""
  verbose = _VERBOSE is not None and _VERBOSE.value
  quiet_console(verbose=verbose)
  host_memory.trim_after_compiles()
  cache, min_compile_s = compilation_cache_settings(os.environ)
  if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_s)
  with start_up_notices_captured(quiet=not verbose) as notices:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], "GPU")
    from jaxpose import parallel  # pylint: disable=g-import-not-at-top
    if _COORDINATOR is not None:
      parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                      _PROCESS_ID.value)
    else:
      parallel.initialize_distributed()
    jax.devices()  # The backends start here, inside the capture too.
  if log_file and jax.process_index() == 0:  # After the distributed start, which comes first.
    to_file = log_to_file(log_file)
    import logging  # pylint: disable=g-import-not-at-top
    start_up = logging.getLogger("start_up_notices")  # To the file only, not the console.
    start_up.propagate = False
    start_up.setLevel(logging.INFO)
    start_up.addHandler(to_file)
    for line in notices:
      start_up.info("%s", line)


def compilation_cache_settings(environ) -> tuple[str, float]:
  """Where the entry points keep XLA's persistent compilation cache and the least compile time
  (s) of a program written there: `$JAXPOSE_COMPILATION_CACHE` ("" turns the cache off), else
  JAX's own `$JAX_COMPILATION_CACHE_DIR`, else ~/.cache/jaxpose/xla; JAX's
  `$JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`, else 1 s (JAX's default)."""
  cache = environ.get("JAXPOSE_COMPILATION_CACHE", environ.get(
      "JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "jaxpose",
                                                "xla")))
  # A threshold that is not a number already stopped `import jax`, naming the variable.
  return cache, float(environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", 1.0))


# What TensorFlow's C++ side prints on stderr at import whatever TF_CPP_MIN_LOG_LEVEL says
# (absl's pre-initialisation logging, once per TensorFlow library that loads): the oneDNN
# notice and absl's remark about itself.
_START_UP_NOTICES = re.compile(
    r"oneDNN custom operations are on|All log messages before absl::InitializeLog\(\)")


@contextlib.contextmanager
def start_up_notices_captured(quiet: bool = True):
  """Within the block, C++ writes to stderr (file descriptor 2, not sys.stderr) are captured;
  at the end everything but the known start-up notices is passed on. Yields the list the
  notices are appended to (for the log file)."""
  notices = []
  if not quiet:
    yield notices
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield notices
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      lines = captured.read().decode(errors="replace").splitlines()
      notices.extend(line for line in lines if _START_UP_NOTICES.search(line))
      others = [line for line in lines if not _START_UP_NOTICES.search(line)]
      if others:
        sys.stderr.write("\n".join(others) + "\n")
        sys.stderr.flush()


def quiet_console(verbose: bool = False) -> None:
  """Console: jaxpose's records as plain lines; other libraries' from ERROR up (all with
  `verbose`). absl's handler goes on the root logger as `app.run` puts it (once; entry points
  without `app.run`, such as `python -m jaxpose.export`, need it here)."""
  absl_logging.use_absl_handler()
  handler = absl_logging.get_absl_handler()
  handler.setFormatter(_PlainFormatter())
  if not verbose:
    handler.addFilter(_OwnRecords())
  absl_logging.set_verbosity(absl_logging.INFO)


def log_to_file(log_file: str):
  """Every record (libraries' too), with its origin and time, appended to `log_file`."""
  import logging  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
  to_file = logging.FileHandler(log_file)
  to_file.setFormatter(logging.Formatter(
      "%(asctime)s %(levelname)s %(name)s %(filename)s:%(lineno)d] %(message)s"))
  logging.getLogger().addHandler(to_file)
  return to_file


class _OwnRecords:
  """Passes jaxpose's records (and anyone's errors)."""

  def filter(self, record) -> bool:
    own = f"{os.sep}jaxpose{os.sep}" in record.pathname or record.pathname.endswith(
        ("train.py", "eval.py", "predict.py")) and "site-packages" not in record.pathname
    return record.levelno >= 40 or own


class _PlainFormatter:
  """"message" for INFO, "warning: message" above it: lines a person reads."""

  def format(self, record) -> str:
    message = record.getMessage()
    if record.exc_info:
      import traceback  # pylint: disable=g-import-not-at-top
      message += "\n" + "".join(traceback.format_exception(*record.exc_info))
    return message if record.levelno < 30 else f"{record.levelname.lower()}: {message}"


def number_list(flag: str, values: list[str], count: int | None = None) -> tuple[float, ...]:
  """A comma-separated list flag's values as floats; app.UsageError naming the flag when one is
  not a number or, with `count`, when there are not `count` of them."""
  try:
    numbers = tuple(float(v) for v in values)
  except ValueError:
    numbers = None
  if numbers is None or (count is not None and len(numbers) != count):
    what = "numbers" if count is None else f"{count} numbers"
    raise app.UsageError(f"--{flag}={','.join(values)}: expected {what}, comma-separated.")
  return numbers


def config_flags_parser(program: str):
  """For `app.run(..., flags_parser=)` with an ml_collections config flag: an override of a key
  the config does not have (`--config.bogus=1`) ends the program with one line naming it, not
  the traceback ml_collections raises while absl parses the flags; absl's own errors as absl
  prints them."""

  def parse(argv):
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      lines = [line.strip() for line in str(e).splitlines() if line.strip()]
      if any(line.startswith("Traceback") for line in lines):  # A config file's get_config
        lines = [lines[0], lines[-1]]                           # raised: what it said.
      sys.exit(f"FATAL Flags parsing error: {' '.join(lines)}\nPass --helpshort or --helpfull "
               "to see help on flags.")
    except (AttributeError, KeyError) as e:  # config_path.get_type: the key does not exist.
      while e.args and isinstance(e.args[0], BaseException):
        e = e.args[0]
      lines = str(e.args[0] if e.args else e).strip("\"'").splitlines()
      key, hint = lines[0].strip("\"'"), " ".join(lines[1:])
      overrides = [a.split("=")[0] for a in argv[1:] if re.match(r"--\w+\.", a)]
      sys.exit(f"{program}: error: the config has no key {key!r} (overrides given: "
               f"{', '.join(overrides)}); an override can only change a key the config defines."
               + (f" {hint}" if hint else ""))

  return parse


def loaded_config(holder):
  """The config of an ml_collections config flag; a file that does not load (missing, or its
  get_config raising) is a FileNotFoundError / ValueError naming it, before anything is
  written."""
  config = holder.value
  try:
    config.get("model")  # A config that failed to load raises on any access.
  except OSError as e:
    cause = e.__cause__ or e
    detail = [line.strip() for line in str(cause).splitlines() if line.strip()][-1]
    name = flags.FLAGS[holder.name].config_filename
    error = FileNotFoundError if "No such file" in detail else ValueError
    raise error(f"--{holder.name}={name}: cannot load it ({detail})") from None
  return config


def clean_errors(main, program: str):
  """Wraps an absl main: errors about the user's input (a missing file, a bad value, a
  non-finite loss) print one line naming the culprit instead of a traceback, and Ctrl-C one
  line (exit status 130). Set JAXPOSE_TRACEBACK=1 to see the traceback."""

  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
            FileExistsError, ValueError, FloatingPointError) as e:
      if os.environ.get("JAXPOSE_TRACEBACK"):
        raise
      sys.exit(f"{program}: error: {type(e).__name__}: {e}")
    except KeyboardInterrupt:  # Ctrl-C: a user's choice, not a failure to explain.
      if os.environ.get("JAXPOSE_TRACEBACK"):
        raise
      print(f"\n{program}: interrupted (Ctrl-C).", file=sys.stderr)
      sys.exit(130)

  return wrapped


def run_main(main, program: str, **app_run_kwargs) -> typing.NoReturn:
  """An absl entry point's whole life: `app.run` of `clean_errors(main, program)`, then
  `exit_without_teardown`."""
  exit_without_teardown(lambda: app.run(clean_errors(main, program), **app_run_kwargs))


def exit_without_teardown(run) -> typing.NoReturn:
  """Calls `run` (an entry point's `app.run(...)`), then ends the process as Python would (the
  other threads joined, the exit handlers run, open files and the streams flushed, `run`'s exit
  status) but without tearing its modules down one by one: after TensorFlow's import that
  teardown took 1.0-1.3 s of CPU time at the end of every run of train.py, eval.py, predict.py
  and the `python -m jaxpose....` tools (2 cores, 2026-12-07). An exception other than
  SystemExit takes Python's own way out (its traceback, then the teardown)."""
  try:
    run()
    code = 0
  except SystemExit as e:
    code = e.code
  if code is not None and not isinstance(code, int):  # As Python: the message, status 1.
    print(code, file=sys.stderr)
    code = 1
  # What Python's finalisation does first: the threading module's exit hooks (they tell an idle
  # ThreadPoolExecutor's workers to end; joined without them, those waited forever), then every
  # thread that is not a daemon joined.
  threading._shutdown()  # pylint: disable=protected-access
  atexit._run_exitfuncs()  # pylint: disable=protected-access  (logging's shutdown among them)
  buffered = (io.TextIOWrapper, io.BufferedWriter, io.BufferedRandom)  # By type: 0.1 s, where
  # isinstance of io.IOBase took 0.2 s over the ~450,000 objects of train.py's process.
  for f in [*(o for o in gc.get_objects() if type(o) in buffered), sys.stdout, sys.stderr]:
    try:  # Files a library left open, and the streams.
      f.flush()
    except (OSError, ValueError):  # A closed file or pipe: nothing more to write there.
      pass
  os._exit(code or 0)
