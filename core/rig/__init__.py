from .head_rig import BoneSpec, CameraSpec, HeadAnimation, HeadRig, MeshTopology
from .model_rig import expression_shape_keys, model_topology, skin_uv

__all__ = ["BoneSpec", "CameraSpec", "HeadAnimation", "HeadRig", "MeshTopology", "expression_shape_keys",
           "model_topology", "skin_uv"]
