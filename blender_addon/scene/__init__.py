"""Scene building: core's arrays -> Blender data (bulk foreach_set, version-aware)."""

from .head_builder import MODEL_TO_BLENDER, build_head, find_head, rig_of, to_blender  # noqa: F401
from .rollback import SceneSnapshot  # noqa: F401
