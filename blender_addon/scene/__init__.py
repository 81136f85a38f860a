"""Scene building: core's arrays -> Blender data (bulk foreach_set, version-aware).

``head_builder`` needs numpy; it is imported only when a head is built, so the add-on
registers (and explains what is missing) even in a Blender without the engine's packages.
"""

from .lookup import camera_of, find_head, rig_of  # noqa: F401
from .rollback import SceneSnapshot  # noqa: F401
