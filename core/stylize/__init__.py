"""Rigging codes and one-shot stylization (after Neural Face Rigging's MAGE and LeGO).

- ``surface``: points on a template surface (vertices + points inside triangles).
- ``deformer``: DS, the surface deformation network pretrained to reproduce a morphable model.
- ``clip_guidance``: CLIP image losses (open_clip, weights from a local checkpoint only).
- ``style``: LeGO's one-shot fine-tuning of a copy DT of DS on one (neutral, stylized) pair, and
  applying the learned style to any head of the model (neutral + every shape key).
- ``diffusion_net`` / ``encoder`` / ``remesh``: the MAGE-style mesh encoder (any topology -> codes).
"""
