"""Panels."""

from . import panels

CLASSES = panels.CLASSES
