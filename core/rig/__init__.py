from .head_rig import BoneSpec, CameraSpec, HeadAnimation, HeadRig

__all__ = ["BoneSpec", "CameraSpec", "HeadAnimation", "HeadRig"]
