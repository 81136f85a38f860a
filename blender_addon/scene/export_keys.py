"""The head as exporters should see it: every shape-key weight in [0, 1] (``core.rig.key_ranges``).

A fitted head's keys may be keyed at -0.85 or 2.2 (PCA coefficients, an artist's exaggeration);
FBX/glTF readers clamp weights to 0..1. ``export_copy`` lends the exporter a temporary copy of the
head in which each such key is split into ``<name>_pos`` / ``<name>_neg`` keys with scaled offsets
and weights (current value and every keyframe), under the head's own object and mesh names. The
user's head, its keys and its actions are never modified; the copy is removed afterwards, whatever
happens.
"""

from __future__ import annotations

import contextlib

import numpy as np

import bpy

from ..engine import core  # noqa: F401  (makes ..core importable)
from ..core.rig import key_ranges as ranges
from .animation import fcurve, fcurves_of, new_action, write_keys

_PATH = 'key_blocks["{}"].value'


def _key_curves(key) -> dict:
    """{shape-key name: (frames, values)} of the keyframed key values in ``key``'s action."""
    ad = key.animation_data
    if ad is None or ad.action is None:
        return {}
    out = {}
    for fc in fcurves_of(ad.action):
        path = fc.data_path
        if not (path.startswith('key_blocks["') and path.endswith('"].value')):
            continue
        co = np.zeros(2 * len(fc.keyframe_points), np.float32)
        fc.keyframe_points.foreach_get("co", co)
        name = path[len('key_blocks["'):-len('"].value')].replace('\\"', '"').replace("\\\\", "\\")
        out[name] = (co[0::2].copy(), co[1::2].copy())
    return out


def _escape(name) -> str:
    return str(name).replace("\\", "\\\\").replace('"', '\\"')


def _coords(kb) -> np.ndarray:
    co = np.zeros(3 * len(kb.data), np.float32)
    kb.data.foreach_get("co", co)
    return co


def keys_to_split(head) -> dict:
    """{name: core SignedSplit} for the head's shape keys whose weights leave [0, 1] (value or keys)."""
    keys = head.data.shape_keys if head.type == "MESH" else None
    if keys is None:
        return {}
    curves = _key_curves(keys)
    out = {}
    for kb in keys.key_blocks[1:]:
        keyed = curves.get(kb.name, (np.zeros(0), np.zeros(0)))[1]
        weights = np.concatenate([[kb.value], keyed])
        if ranges.needs_split(weights):
            out[kb.name] = ranges.split_signed(weights)
    return out


@contextlib.contextmanager
def export_copy(context, head):
    """Yield the object to export in place of ``head``: ``head`` itself when all its weights are in
    [0, 1], else a temporary copy with split keys, named as ``head`` while the export runs."""
    splits = keys_to_split(head)
    if not splits:
        yield head
        return
    names = (head.name, head.data.name)
    made = {"object": None, "mesh": None, "action": None}
    try:
        copy = head.copy()
        made["object"] = copy
        copy.data = head.data.copy()           # the mesh copy brings its own copy of the shape keys
        made["mesh"] = copy.data
        for coll in head.users_collection:
            coll.objects.link(copy)
        copy.matrix_world = head.matrix_world.copy()
        keys = copy.data.shape_keys
        curves = _key_curves(head.data.shape_keys)
        if keys.animation_data is not None:
            keys.animation_data.action = None   # the copy gets its own action (below), never the user's
        basis = _coords(keys.key_blocks[0])
        for name, split in splits.items():
            kb = keys.key_blocks[name]
            delta = _coords(kb) - basis
            pos_name, neg_name = ranges.split_names(name)
            kb.data.foreach_set("co", basis + split.scale * delta)
            kb.name = pos_name
            neg = copy.shape_key_add(name=neg_name, from_mix=False)
            neg.data.foreach_set("co", basis - split.scale * delta)
            neg.relative_key = kb.relative_key
            for k, w in ((kb, split.positive[0]), (neg, split.negative[0])):
                k.slider_min, k.slider_max = 0.0, 1.0
                k.value = float(w)
        if curves:
            action = new_action(keys, f"{head.name}_export_keys")
            made["action"] = action
            for name, (frames, values) in curves.items():
                if name in splits:
                    scale = splits[name].scale           # the key's one scale (its current value counts too)
                    for new_name, w in zip(ranges.split_names(name), (np.clip(values, 0, None), np.clip(-values, 0, None))):
                        write_keys(fcurve(action, _PATH.format(_escape(new_name)), 0, "Expressions"), frames, w / scale)
                else:
                    write_keys(fcurve(action, _PATH.format(_escape(name)), 0, "Expressions"), frames, values)
        # the exported file names the head as the user named it
        head.name, head.data.name = names[0] + ".faceforge-export-original", names[1] + ".faceforge-export-original"
        copy.name, copy.data.name = names
        yield copy
    finally:
        for key in ("object", "mesh", "action"):
            block = made[key]
            if block is None:
                continue
            try:
                if key == "object":
                    bpy.data.objects.remove(block)
                elif key == "mesh":
                    bpy.data.meshes.remove(block)
                else:
                    bpy.data.actions.remove(block)
            except ReferenceError:
                pass
        head.name, head.data.name = names
