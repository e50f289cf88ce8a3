"""jaxpose: classic CNN human-pose estimators in JAX/Flax."""
