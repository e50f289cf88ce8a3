"""Keypoint <-> training target codecs: `Codec` (base.py), heatmap.py, coordinate.py."""

from jaxpose.codecs.base import Codec

__all__ = ["Codec"]
