"""Operators, all under the ``faceforge.`` prefix; long ones are runner.JobOperator subclasses."""

from . import arkit, export, implicit, mesh_codes, model, photos, reconstruct, setup, stylize, track, view

CLASSES = (reconstruct.CLASSES + photos.CLASSES + track.CLASSES + view.CLASSES + export.CLASSES + model.CLASSES
           + setup.CLASSES + arkit.CLASSES + stylize.CLASSES + mesh_codes.CLASSES
           + implicit.CLASSES)

from . import batch  # noqa: E402  (the Batch sub-panel's operators and settings)

CLASSES += batch.CLASSES

from . import pins  # noqa: E402  (artists' corrections: pin mode, reset)

CLASSES += pins.CLASSES
