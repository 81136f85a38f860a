"""Errors the user can act on. Every message says what went wrong and what to do."""


class FaceForgeError(Exception):
    """Base class: anything raised on purpose by FaceForge, with a user-facing message."""


class InputError(FaceForgeError):
    """A file the user gave cannot be read or is not what was expected."""


class ImageReadError(InputError):
    """The image is missing, corrupt, or in a format OpenCV cannot decode."""


class NoFaceError(FaceForgeError):
    """The face detector found no face."""


class FaceTurnedError(NoFaceError):
    """A face was found but it is turned too far from the camera (nearly a profile) to be fitted."""


class ModelFileError(InputError):
    """A morphable-model file is missing, malformed, unsafe, or of the wrong kind."""


class UnsafeFileError(ModelFileError):
    """The file tried to run code or reference something outside the allow-list on load."""


class TopologyError(FaceForgeError):
    """Two meshes / arrays that must share a topology do not."""


class JobCancelled(FaceForgeError):
    """The user cancelled a running job."""

    def __init__(self, message: str = "Cancelled by the user; nothing was changed."):
        super().__init__(message)
