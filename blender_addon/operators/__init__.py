"""Operators, all under the ``faceforge.`` prefix; long ones are runner.JobOperator subclasses."""

from . import export, model, reconstruct, setup, view

CLASSES = reconstruct.CLASSES + view.CLASSES + export.CLASSES + model.CLASSES + setup.CLASSES
