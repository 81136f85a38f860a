"""Operators, all under the ``faceforge.`` prefix."""

from . import export, reconstruct

CLASSES = reconstruct.CLASSES + export.CLASSES
