"""Shared test set-up: quiet TF, no GPU for TF, a per-session compilation cache."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
