"""Panels."""

from . import panels

CLASSES = panels.CLASSES

from . import batch_panel  # noqa: E402  (the Batch sub-panel, drawn last)

CLASSES += batch_panel.CLASSES
