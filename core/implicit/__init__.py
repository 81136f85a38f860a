"""The implicit head (after MonoNPHM, NeRFace, MonoPort): a per-person neural SDF head from a video.

- ``model``: geometry (SDF), appearance and backward-deformation MLPs with per-frame codes; Fourier
  features on a CPU, a multiresolution hash grid on a GPU.
- ``render``: rays inside the tracked head's box, an occupancy grid, NeuS volume rendering (training)
  and direct surface rendering (Preview).
- ``train``: pretraining to the tracked morphable model's SDF, then photometric / silhouette /
  keypoint / eikonal training with checkpoints that resume.
- ``extract``: octree-style surface localisation + marching cubes.
- ``meshing``: the canonical mesh moved into every frame by inverting the deformation (one topology).
- ``sequence``: a mesh sequence as a compact blendshape basis for Blender.
- ``synthetic``: a synthetic talking head with hair-like geometry and known truth, for tests.
"""
