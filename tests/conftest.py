"""Shared test set-up: quiet TF, no GPU for TF, the suite's own compilation cache."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# The suite checks values and programs' structure, not their speed, and compiles hundreds of
# small programs: XLA's backend at optimisation level 0 compiles the tiny configs' train steps
# in 0.5-0.65x the time (`--xla_backend_optimization_level`; the whole suite ran 13m29s against
# 15m23s, 2026-12-06). Set in the environment, so the scripts and CLIs the tests start inherit
# it. The benchmarks, the demo and users' runs keep XLA's default.
O0 = "--xla_backend_optimization_level=0"
if O0 not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {O0}".strip()

# The suite compiles the same small programs many times (each train/eval run jits afresh):
# XLA's persistent cache turns the repeats into cache hits. Set in the environment before JAX
# is imported, so this process and the scripts and CLIs the tests start (`runtime.setup`) share
# the suite's own cache at its threshold, and leave the user's (~/.cache/jaxpose/xla) alone.
os.environ.pop("JAXPOSE_COMPILATION_CACHE", None)
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", ".pytest_cache", "xla")
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
