"""Shared test set-up: quiet TF, no GPU for TF, a per-session compilation cache."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import jax  # noqa: E402

# The suite compiles the same small programs many times (each train/eval run jits afresh):
# XLA's persistent cache turns the repeats into cache hits.
jax.config.update("jax_compilation_cache_dir",
                  os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "xla"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
