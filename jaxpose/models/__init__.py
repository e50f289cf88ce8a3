"""Pose models: one pure linen module family per file."""
