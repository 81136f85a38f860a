"""Learn Style / Apply Style in Blender (bpy): a sculpted copy of a FaceForge head teaches a style that
is applied to another, tracked head; the stylized copy has the style, the same shape keys and plays
the same animation; bad selections and files change nothing; the ``apply-style`` command line."""

from __future__ import annotations

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from tests.blender_support import addon_registered, empty_scene  # noqa: E402,F401  (fixtures)
from blender_addon.core.models.builtin import load_embedded  # noqa: E402
from blender_addon.core.rig import BoneSpec, HeadAnimation, HeadRig  # noqa: E402
from blender_addon.core.rig.model_rig import expression_shape_keys, model_topology  # noqa: E402
from blender_addon.core.stylize.examples import goblin_sculpt  # noqa: E402
from blender_addon.scene import head_builder  # noqa: E402
from blender_addon.scene.style import rest_vertices  # noqa: E402

from test_track_blender import cli, evaluated_world_vertices  # noqa: E402

pytestmark = [pytest.mark.blender, pytest.mark.slow]


@pytest.fixture(scope="module")
def ict():
    return load_embedded("ict")


def ict_rig(model, seed, name, frames=0) -> HeadRig:
    shape = (np.random.default_rng(seed).standard_normal(model.n_shape) * 0.8).astype(np.float32)
    neutral = model.v_template + np.einsum("vck,k->vc", model.shape_basis, shape)
    names, deltas, values = expression_shape_keys(model)
    anim = None
    if frames:
        T = frames
        vals = np.zeros((T, len(names)), np.float32)
        vals[:, names.index("jawOpen")] = np.linspace(0.0, 1.0, T)
        anim = HeadAnimation(fps=24.0, frame_start=1, shape_key_values=vals, root_rotation=np.tile(np.eye(3), (T, 1, 1)),
                             root_translation=np.zeros((T, 3)), joint_pose=None, valid=np.ones(T, bool),
                             video_path="clip.mp4")
    bones = BoneSpec(names=["root"], parents=np.array([-1]), heads=neutral.mean(0, keepdims=True).astype(np.float32),
                     weights=np.ones((model.n_vertices, 1), np.float32), pose=np.zeros((0, 3), np.float32))
    return HeadRig(name=name, vertices=neutral.astype(np.float32), faces=model.faces.copy(), shape_key_names=names,
                   shape_key_deltas=deltas, shape_key_values=values, bones=bones, animation=anim,
                   topology=model_topology(model), metadata={"model": model.name})


def sculpt_copy(context, head, model):
    """What an artist does: duplicate the head and sculpt the copy's Basis (here: the goblin sculpt)."""
    obj = head.copy()
    obj.data = head.data.copy()
    obj.name = "Goblin"
    for c in head.users_collection:
        c.objects.link(obj)
    co = head_builder.to_blender(goblin_sculpt(model, rest_vertices(head))).astype(np.float32).ravel()
    obj.data.shape_keys.reference_key.data.foreach_set("co", co)
    obj.data.vertices.foreach_set("co", co)
    obj.data.update()
    return obj


def select(context, *objs, active=None):
    for o in context.view_layer.objects:
        o.select_set(False)
    for o in objs:
        o.select_set(True)
    context.view_layer.objects.active = active


def names(kind):
    return sorted(x.name for x in getattr(bpy.data, kind))


def test_learn_and_apply_style_on_a_tracked_head(empty_scene, ict, tmp_path):
    ctx = empty_scene
    neutral = head_builder.build_head(ctx, ict_rig(ict, 1, "Neutral"))["mesh"]
    sculpt = sculpt_copy(ctx, neutral, ict)
    select(ctx, neutral, sculpt, active=sculpt)
    style_path = tmp_path / "goblin.ffstyle.pt"
    assert bpy.ops.faceforge.learn_style(iterations=100, filepath=str(style_path)) == {"FINISHED"}
    assert style_path.is_file() and ctx.scene.faceforge.style_path == str(style_path)
    assert "0." in ctx.window_manager.faceforge_job.last_message or "mm" in ctx.window_manager.faceforge_job.last_message

    built = head_builder.build_head(ctx, ict_rig(ict, 2, "Actor", frames=12))
    actor = built["mesh"]
    select(ctx, actor, active=actor)
    before = set(names("objects"))
    assert bpy.ops.faceforge.apply_style() == {"FINISHED"}
    new = [bpy.data.objects[n] for n in set(names("objects")) - before]
    heads = [o for o in new if o.type == "MESH"]
    assert len(heads) == 1
    styled = heads[0]
    assert styled.get("faceforge_style") == "Goblin" and styled.get("faceforge_styled_from") == actor.name
    # same shape keys, and the same action drives them
    assert [k.name for k in styled.data.shape_keys.key_blocks] == [k.name for k in actor.data.shape_keys.key_blocks]
    act = actor.data.shape_keys.animation_data.action
    assert styled.data.shape_keys.animation_data.action == act
    # the goblin nose on the actor: the stylized rest shape differs from the actor's where the sculpt did
    a, s = rest_vertices(actor), rest_vertices(styled)
    d_style = np.linalg.norm(rest_vertices(sculpt) - rest_vertices(neutral), axis=1)
    d_new = np.linalg.norm(s - a, axis=1)
    moved = d_style > 1e-3
    assert np.median(d_new[moved]) > 0.5 * np.median(d_style[moved])
    assert np.median(d_new[d_style < 1e-5]) < 1e-3
    # the animation plays on it: jawOpen opens the stylized mouth over the clip
    jaw = ict.expr_names.index("jawOpen")
    mouth = np.abs(ict.expr_basis[:, :, jaw]).sum(1) > 0.5 * np.abs(ict.expr_basis[:, :, jaw]).sum(1).max()
    ctx.scene.frame_set(1)
    closed = evaluated_world_vertices(styled)
    ctx.scene.frame_set(12)
    opened = evaluated_world_vertices(styled)
    assert np.linalg.norm(opened - closed, axis=1)[mouth].mean() > 0.005
    # beside the actor, not on it
    assert np.linalg.norm(np.array(styled.matrix_world.translation) - np.array(actor.matrix_world.translation)) > 0.1


def test_bad_selections_and_files_change_nothing(empty_scene, ict, tmp_path):
    ctx = empty_scene
    neutral = head_builder.build_head(ctx, ict_rig(ict, 3, "Neutral"))["mesh"]
    bpy.ops.mesh.primitive_cube_add()
    cube = ctx.view_layer.objects.active
    state = names("objects"), names("meshes")
    # a cube is not a sculpt of the head
    select(ctx, neutral, cube, active=cube)
    with pytest.raises(RuntimeError, match="vertices"):
        bpy.ops.faceforge.learn_style(iterations=2, filepath=str(tmp_path / "x.ffstyle.pt"))
    # a non-mesh
    bpy.ops.object.empty_add()
    empty = ctx.view_layer.objects.active
    select(ctx, neutral, empty, active=empty)
    with pytest.raises(RuntimeError, match="not a mesh"):
        bpy.ops.faceforge.learn_style(iterations=2, filepath=str(tmp_path / "x.ffstyle.pt"))
    bpy.data.objects.remove(empty)
    assert (names("objects"), names("meshes")) == state
    # a style file that is not one, and one that does not exist
    select(ctx, neutral, active=neutral)
    junk = tmp_path / "junk.ffstyle.pt"
    junk.write_bytes(b"junk")
    with pytest.raises(RuntimeError, match="not a FaceForge"):
        bpy.ops.faceforge.apply_style(filepath=str(junk))
    with pytest.raises(RuntimeError, match="does not exist"):
        bpy.ops.faceforge.apply_style(filepath=str(tmp_path / "missing.ffstyle.pt"))
    assert (names("objects"), names("meshes")) == state
    assert not (tmp_path / "x.ffstyle.pt").exists()


def test_style_for_another_model_is_refused(empty_scene, ict, tmp_path):
    """A style learned on the face mask does not go on an ICT head (clear message, scene untouched)."""
    from blender_addon.core.stylize import deformer, style
    mask = load_embedded("facemask")
    net, _ = deformer.train_surface_deformer(mask, steps=5)
    v = mask.v_template.astype(np.float64)
    asset = style.learn_style(mask, net, v, goblin_sculpt(mask, v), style.StyleConfig(iterations=2))
    path = asset.save(tmp_path / "mask.ffstyle.pt")
    ctx = empty_scene
    actor = head_builder.build_head(ctx, ict_rig(ict, 4, "Actor"))["mesh"]
    select(ctx, actor, active=actor)
    state = names("objects"), names("meshes")
    with pytest.raises(RuntimeError, match="learned for the model"):
        bpy.ops.faceforge.apply_style(filepath=str(path))
    assert (names("objects"), names("meshes")) == state


def test_cli_apply_style(empty_scene, ict, tmp_path):
    ctx = empty_scene
    neutral = head_builder.build_head(ctx, ict_rig(ict, 5, "Neutral"))["mesh"]
    sculpt = sculpt_copy(ctx, neutral, ict)
    select(ctx, neutral, sculpt, active=sculpt)
    style_path = tmp_path / "goblin.ffstyle.pt"
    assert bpy.ops.faceforge.learn_style(iterations=3, filepath=str(style_path)) == {"FINISHED"}
    bpy.data.objects.remove(sculpt)
    select(ctx, neutral, active=neutral)
    blend = tmp_path / "actor.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend), copy=True)
    r = cli("apply-style", blend, style_path, "--glb", tmp_path / "goblin.glb", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "goblin.glb").stat().st_size > 100_000
    r = cli("apply-style", blend, tmp_path / "nope.ffstyle.pt", "--glb", tmp_path / "x.glb")
    assert r.returncode != 0 and "does not exist" in r.stderr
    assert not (tmp_path / "x.glb").exists()
