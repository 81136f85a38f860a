"""Package list for pyproject.toml's ``faceforge`` mapping (blender_addon -> faceforge, core -> faceforge.core).

Found at build time so that a new engine subpackage (core/track, core/implicit, ...) is never left out.
"""

from setuptools import find_packages, setup


def mapped(name: str, folder: str) -> list:
    return [name] + [f"{name}.{sub}" for sub in find_packages(folder)]


setup(packages=mapped("faceforge", "blender_addon") + mapped("faceforge.core", "core") + ["faceforge.weights"])
