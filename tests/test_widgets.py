"""Panel text (issue 12 item 11): wrapped to the region's real width as Blender's font measures it,
paths shortened from the middle with the full path as the tooltip; and View Through Photo Camera's
framing arithmetic (item 12: the visible part of the 3D view, the camera frame's size)."""

from __future__ import annotations

import types

import pytest

bpy = pytest.importorskip("bpy")

from tests.blender_support import addon_registered  # noqa: E402,F401  (fixture)
from blender_addon import widgets  # noqa: E402
from blender_addon.operators import view  # noqa: E402

pytestmark = pytest.mark.blender

LONG = ("Built 'astronaut': 26719 vertices, 59 expression keys, 2048x1024 texture packed into the .blend "
        "file (save the file to keep it); wrote /home/someone/projects/faces/reports/astronaut_2026/params.json, "
        "/home/someone/projects/faces/reports/astronaut_2026/overlay.png")


def px(text):                       # a stand-in font: 6 px a character, 'W' wider
    return sum(11 if c == "W" else 6 for c in text)


def region_context(width):
    return types.SimpleNamespace(region=types.SimpleNamespace(width=width), preferences=bpy.context.preferences)


# ----------------------------------------------------------------------------- wrapping
def test_wrap_fits_the_width_and_keeps_every_word():
    text = "No face was found in WWWW the photo: try one where the face is larger and lit from the front."
    for width in (60, 90, 150, 400):
        lines = widgets.wrap(text, width, px)
        assert all(px(line) <= width for line in lines), (width, lines)
        assert " ".join(lines).split() == text.split()
    assert len(widgets.wrap(text, 90, px)) > len(widgets.wrap(text, 400, px))
    # a word longer than a line (a path) is broken, after a slash where it can be
    lines = widgets.wrap("see /a/very/long/folder/name/file.png now", 60, px)
    assert all(px(line) <= 60 for line in lines) and "".join(lines).replace(" ", "") == \
        "see/a/very/long/folder/name/file.pngnow"
    assert any(line.endswith("/") for line in lines)
    # characters by default (the preferences' fixed-width use)
    assert widgets.wrap("one two three four five", 9) == ["one two", "three", "four five"]


def test_wrapping_follows_the_regions_real_width():
    wide, measure = widgets.line_space(region_context(600))
    narrow, _ = widgets.line_space(region_context(230))
    assert measure is not len and narrow < wide < 600
    lines_wide = widgets.wrap(LONG, wide, measure)
    lines_narrow = widgets.wrap(LONG, narrow, measure)
    assert all(measure(line) <= narrow for line in lines_narrow)
    assert len(lines_narrow) > len(lines_wide)
    assert max(len(line) for line in lines_wide) > widgets.WRAP           # not the old fixed 30 characters
    # bigger UI scale, bigger text: fewer characters in the same region
    prefs = bpy.context.preferences
    old = prefs.view.ui_scale
    try:
        prefs.view.ui_scale = 2.0
        w2, m2 = widgets.line_space(region_context(600))
        assert len(widgets.wrap(LONG, w2, m2)) > len(lines_wide)
    finally:
        prefs.view.ui_scale = old
    # no region (a script, a test): the old default width
    assert widgets.line_space(types.SimpleNamespace(region=None)) == (widgets.WRAP, len)


# ----------------------------------------------------------------------------- paths
def test_shorten_path_cuts_the_middle_at_folders():
    path = "/home/someone/projects/faces/reports/astronaut_2026/params.json"
    assert widgets.shorten_path(path, 1000, px) == path
    for width in (330, 250, 180, 140):
        short = widgets.shorten_path(path, width, px)
        assert px(short) <= width and widgets.ELLIPSIS in short, (width, short)
        head, tail = short.split(widgets.ELLIPSIS)
        assert path.startswith(head) and path.endswith(tail) and tail.endswith("/params.json")
        assert tail.startswith("/") and (head == "" or head.endswith("/"))      # whole folder names
    # as much kept as fits, in whole folders
    E = widgets.ELLIPSIS
    assert widgets.shorten_path(path, 250, px) == "/" + E + "/reports/astronaut_2026/params.json"
    assert widgets.shorten_path(path, 290, px) == "/home/" + E + "/faces/reports/astronaut_2026/params.json"
    # Windows paths too; a name too long on its own keeps both ends (its extension)
    win = "C:\\Users\\someone\\Documents\\FaceForge\\tracks\\single_face_1.fftrack.npz"
    assert widgets.shorten_path(win, 200, px).endswith("\\single_face_1.fftrack.npz")
    name = "a_really_really_long_file_name_without_any_folders_at_all.fftrack.npz"
    for path in (name, "/home/someone/" + name):
        short = widgets.shorten_path(path, 120, px)
        assert px(short) <= 120 and short.startswith("a_rea") and short.endswith(".npz"), short


def test_split_paths_finds_paths_in_messages():
    parts = widgets.split_paths(LONG)
    assert [k for k, _ in parts] == ["text", "path", "path"]
    assert parts[0][1].endswith("; wrote")
    assert parts[1][1] == "/home/someone/projects/faces/reports/astronaut_2026/params.json"
    assert parts[2][1] == "/home/someone/projects/faces/reports/astronaut_2026/overlay.png"
    parts = widgets.split_paths("The video '/media/my clips/take 1.mp4' was not found: the camera has no background.")
    assert parts == [("text", "The video"), ("path", "/media/my clips/take 1.mp4"),
                     ("text", "was not found: the camera has no background.")]
    parts = widgets.split_paths("Saved to C:\\faces\\head.fbx.")
    assert parts == [("text", "Saved to"), ("path", "C:\\faces\\head.fbx")]
    for plain in ("No face in 3/4 of the frames", "Fitting 24% · ETA 9 s", "and/or 1920x1080"):
        assert widgets.split_paths(plain) == [("text", plain)]


class Recorder:
    """A layout that records labels and operator buttons (with the properties set on them)."""

    def __init__(self, log):
        self.log, self.alert = log, False

    def column(self, **kw):
        return self

    row = column

    def label(self, text="", icon="NONE"):
        self.log.append(("label", text, icon))

    def operator(self, idname, text="", icon="NONE", emboss=True):
        props = types.SimpleNamespace()
        self.log.append(("operator", idname, text, icon, emboss, props))
        return props


def test_hint_draws_paths_as_buttons_with_the_full_path_as_tooltip(monkeypatch):
    monkeypatch.setattr(widgets, "line_space", lambda context, inset=widgets.LABEL_INSET: (170, px))
    log = []
    widgets.hint(Recorder(log), LONG, icon="CHECKMARK")
    labels = [e for e in log if e[0] == "label"]
    buttons = [e for e in log if e[0] == "operator"]
    assert labels[0][2] == "CHECKMARK" and all(e[2] == "BLANK1" for e in labels[1:])
    assert all(px(e[1]) <= 170 for e in labels)
    assert [b[5].path for b in buttons] == ["/home/someone/projects/faces/reports/astronaut_2026/params.json",
                                            "/home/someone/projects/faces/reports/astronaut_2026/overlay.png"]
    for b in buttons:
        assert b[1] == widgets.PATH_OPERATOR and b[4] is False               # looks like text
        assert widgets.ELLIPSIS in b[2] and px(b[2]) <= 170
    op = bpy.types.FACEFORGE_OT_copy_path
    assert op.description(bpy.context, buttons[0][5]).startswith(buttons[0][5].path)
    assert bpy.ops.faceforge.copy_path(path=buttons[0][5].path) == {"FINISHED"}


# ----------------------------------------------------------------------------- camera framing arithmetic
def R(kind, x, y, w, h):
    return types.SimpleNamespace(type=kind, x=x, y=y, width=w, height=h)


def test_visible_rect_leaves_out_the_overlapping_sidebar_and_toolbar():
    # Blender 3.4's default layout at 1600x900 (as measured): tool header, toolbar and sidebar overlap
    win = R("WINDOW", 0, 87, 1321, 759)
    regions = [R("HEADER", 0, 846, 1321, 27), R("TOOL_HEADER", 0, 819, 1321, 27), R("TOOLS", 0, 87, 60, 732),
               R("UI", 1092, 87, 229, 732), R("HUD", 60, 87, 1, 1), win]
    space = types.SimpleNamespace(show_region_ui=True, show_region_toolbar=True, show_region_tool_header=True,
                                  show_region_header=True)
    area = types.SimpleNamespace(regions=regions, spaces=types.SimpleNamespace(active=space))
    assert view.visible_rect(area, win) == (60, 0, 1092, 732)
    space.show_region_ui = False                                 # a hidden sidebar covers nothing
    assert view.visible_rect(area, win) == (60, 0, 1321, 732)
    # Region Overlap off: the sidebar sits beside a narrower view
    win2 = R("WINDOW", 60, 87, 1032, 732)
    area.regions = [R("TOOLS", 0, 87, 60, 732), R("UI", 1092, 87, 229, 732), win2]
    space.show_region_ui = True
    assert view.visible_rect(area, win2) == (0, 0, 1032, 732)


def test_camera_frame_size_and_zoom_factor():
    for z in (-30.0, 0.0, 17.5, 300.0):
        assert view.fac_to_zoom(view.zoom_to_fac(z)) == pytest.approx(z)
    assert view.zoom_to_fac(0.0) == pytest.approx(0.5)          # Blender's default camera zoom
    scene = types.SimpleNamespace(render=types.SimpleNamespace(resolution_x=640, resolution_y=480,
                                                               pixel_aspect_x=1.0, pixel_aspect_y=1.0))
    cam = types.SimpleNamespace(sensor_fit="AUTO")
    # a landscape view: at factor 1 the frame is as wide as the region
    assert view.camera_frame_size(scene, cam, R("WINDOW", 0, 0, 1000, 700)) == pytest.approx((1000, 750))
    # a portrait view fits the region's height
    assert view.camera_frame_size(scene, cam, R("WINDOW", 0, 0, 500, 800)) == pytest.approx((800, 600))
    scene.render.resolution_x, scene.render.resolution_y = 480, 640   # a portrait photo in a landscape view
    assert view.camera_frame_size(scene, cam, R("WINDOW", 0, 0, 1000, 700)) == pytest.approx((750, 1000))
