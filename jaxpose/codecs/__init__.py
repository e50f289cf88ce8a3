"""Keypoint <-> training target codecs (pure functions)."""
