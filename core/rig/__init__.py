from .head_rig import BoneSpec, CameraSpec, HeadRig

__all__ = ["BoneSpec", "CameraSpec", "HeadRig"]
