"""Shared test set-up: quiet TF, no GPU for TF, a per-session compilation cache."""

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

import jax  # noqa: E402

# The suite compiles the same small programs many times (each train/eval run jits afresh):
# XLA's persistent cache turns the repeats into cache hits.
jax.config.update("jax_compilation_cache_dir",
                  os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "xla"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
