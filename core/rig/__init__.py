"""Plain arrays describing a rigged head (no bpy, no torch); ``model_rig`` derives them from a model."""

from .head_rig import BoneSpec, CameraSpec, HeadAnimation, HeadRig, MeshTopology

__all__ = ["BoneSpec", "CameraSpec", "HeadAnimation", "HeadRig", "MeshTopology"]
