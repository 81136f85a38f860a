"""load_image on every format it claims: files written here with OpenCV, Pillow and tifffile, checked
pixel by pixel (uint8 RGB out, 16-bit/float scaling, linear EXR -> sRGB, alpha on white, grey -> RGB,
EXIF orientation applied exactly once), and the clear errors for files it cannot read."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from core.detect.images import SUPPORTED_SUFFIXES, exif_focal_px, image_file_glob, load_image
from core.errors import ImageReadError

ROOT = Path(__file__).resolve().parent.parent
H, W = 48, 64
# an RGB test card: a horizontal ramp in R, a vertical ramp in G, constant B (channel order shows)
_x, _y = np.meshgrid(np.linspace(0, 1, W), np.linspace(0, 1, H))
CARD = np.stack([_x, _y, np.full_like(_x, 0.25)], -1).astype(np.float32)
CARD8 = np.round(CARD * 255).astype(np.uint8)


def cv2_write(path, rgb_or_grey, *params):
    import cv2
    img = rgb_or_grey
    if img.ndim == 3:
        img = img[..., [2, 1, 0, 3]] if img.shape[2] == 4 else img[..., ::-1]   # RGB(A) -> BGR(A)
    assert cv2.imwrite(str(path), np.ascontiguousarray(img), list(params)), path
    return path


def srgb(x):
    x = np.asarray(x, np.float64)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


def marker_card(h=H, w=W):
    """Grey with a red block at the stored image's top-left corner: where it lands shows the orientation."""
    a = np.full((h, w, 3), 128, np.uint8)
    a[:12, :12] = (255, 0, 0)
    return a


def red_corner(img):
    """Which corner of ``img`` holds the red marker: 'tl', 'tr', 'bl' or 'br'."""
    h, w = img.shape[:2]
    corners = {"tl": img[2, 2], "tr": img[2, w - 3], "bl": img[h - 3, 2], "br": img[h - 3, w - 3]}
    red = [k for k, v in corners.items() if v[0] > 200 and v[1] < 60 and v[2] < 60]
    assert len(red) == 1, corners
    return red[0]


# ----------------------------------------------------------------------------- lossless 8-bit formats
@pytest.mark.parametrize("suffix,params", [
    (".ppm", ()), (".bmp", ()), (".png", ()), (".tif", ()), (".sr", ()),
    (".webp", (64, 101)),          # cv2.IMWRITE_WEBP_QUALITY = 64; above 100 is lossless
])
def test_8bit_rgb_formats_are_exact(tmp_path, suffix, params):
    path = cv2_write(tmp_path / f"card{suffix}", CARD8, *params)
    img = load_image(path)
    assert img.dtype == np.uint8 and img.shape == (H, W, 3) and img.flags.c_contiguous
    np.testing.assert_array_equal(img, CARD8)


def test_ppm_written_by_pillow_and_numpy(tmp_path):
    """A binary PPM (P6) written by hand: the format the issue's user had refused."""
    path = tmp_path / "hand.ppm"
    path.write_bytes(b"P6\n%d %d\n255\n" % (W, H) + CARD8.tobytes())
    np.testing.assert_array_equal(load_image(path), CARD8)
    Image.fromarray(CARD8).save(tmp_path / "pil.ppm")
    np.testing.assert_array_equal(load_image(tmp_path / "pil.ppm"), CARD8)


def test_grey_pgm_and_16bit_grey_png_become_rgb(tmp_path):
    grey = CARD8[..., 0]
    img = load_image(cv2_write(tmp_path / "g.pgm", grey))
    assert img.shape == (H, W, 3)
    for c in range(3):
        np.testing.assert_array_equal(img[..., c], grey)
    g16 = np.round(CARD[..., 1] * 65535).astype(np.uint16)
    img = load_image(cv2_write(tmp_path / "g16.png", g16))
    np.testing.assert_array_equal(img[..., 2], np.round(g16 / 257).astype(np.uint8))
    assert (img[..., 0] == img[..., 2]).all()


def test_tga_is_read_through_pillow(tmp_path):
    """OpenCV has no TGA decoder: Pillow's path gives the same pixels."""
    Image.fromarray(CARD8).save(tmp_path / "card.tga")
    np.testing.assert_array_equal(load_image(tmp_path / "card.tga"), CARD8)


# ----------------------------------------------------------------------------- 16-bit and float
@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_16bit_rgb_is_scaled_from_full_range(tmp_path, suffix):
    v16 = np.round(CARD * 65535).astype(np.uint16)
    v16[0, 0] = (65535, 257, 0)        # full scale, one 8-bit step, zero
    img = load_image(cv2_write(tmp_path / f"c16{suffix}", v16))
    assert img.dtype == np.uint8
    assert img[0, 0].tolist() == [255, 1, 0]
    np.testing.assert_array_equal(img, np.round(v16 / 257.0).astype(np.uint8))


def test_float_tiff_is_display_referred(tmp_path):
    """Float TIFF in [0, 1]: taken as it is (no gamma); the same picture saved as 0-255 floats reads alike."""
    import tifffile
    tifffile.imwrite(tmp_path / "f.tif", CARD, photometric="rgb")
    img = load_image(tmp_path / "f.tif")
    np.testing.assert_allclose(img.astype(int), CARD8.astype(int), atol=1)
    tifffile.imwrite(tmp_path / "f255.tif", CARD * 255.0, photometric="rgb")
    scaled = load_image(tmp_path / "f255.tif")
    # the 0-255 copy is brought down by its 99th-percentile peak (254.x), i.e. within 1% of /255
    np.testing.assert_allclose(scaled.astype(int), CARD8.astype(int), atol=3)


def _scene(scale):
    """Linear-light scene: a wall at 1/4 of the white patch, a white patch (20% of the picture), a red patch."""
    a = np.full((H, W, 3), 0.25, np.float32)
    a[-10:] = 1.0
    a[:8, :8] = (1.0, 0.0, 0.0)
    return a * np.float32(scale)


@pytest.mark.parametrize("half", [False, True])
def test_exr_is_exposed_and_srgb_encoded(tmp_path, half):
    import cv2
    params = (cv2.IMWRITE_EXR_TYPE, cv2.IMWRITE_EXR_TYPE_HALF if half else cv2.IMWRITE_EXR_TYPE_FLOAT)
    img = load_image(cv2_write(tmp_path / "scene.exr", _scene(6.0), *params))
    wall = int(np.round(srgb(0.25) * 255))           # 137: a quarter of white, sRGB-encoded
    assert img.dtype == np.uint8 and img.shape == (H, W, 3)
    assert img[20, 30].tolist() == [wall] * 3
    assert img[-1, -1].tolist() == [255, 255, 255]
    assert img[2, 2].tolist() == [255, 0, 0]         # red stays in R: channel order kept
    # exposure normalisation: the same scene 1000x darker or 50x brighter gives the same picture
    for scale in (0.006, 300.0):
        other = load_image(cv2_write(tmp_path / f"s{scale}.exr", _scene(scale), *params))
        np.testing.assert_allclose(other.astype(int), img.astype(int), atol=1)


def test_exr_with_alpha_is_composited_on_white(tmp_path):
    """EXR colour is premultiplied: a transparent pixel (0, 0, 0, 0) becomes white, half-covered red pink."""
    a = np.zeros((H, W, 4), np.float32)
    a[-10:] = (1, 1, 1, 1)                 # opaque white patch: the exposure reference
    a[:20, :20] = (0.5, 0.0, 0.0, 0.5)     # red at 50% coverage, premultiplied
    img = load_image(cv2_write(tmp_path / "a.exr", a))
    assert img[30, 40].tolist() == [255, 255, 255]
    pink = int(np.round(srgb(0.5) * 255))  # 0.5 red + 0.5 white: G and B at linear 0.5
    assert img[5, 5].tolist() == [255, pink, pink]


@pytest.mark.parametrize("suffix", [".hdr", ".pfm"])
def test_other_linear_float_formats(tmp_path, suffix):
    img = load_image(cv2_write(tmp_path / f"scene{suffix}", _scene(3.0)))
    assert abs(int(img[20, 30, 0]) - int(np.round(srgb(0.25) * 255))) <= 2 and img[-1, -1].min() >= 253


def test_exr_reads_in_a_fresh_process_that_imported_cv2_first(tmp_path):
    """OPENCV_IO_ENABLE_OPENEXR is set by core (OpenCV reads it at the first EXR decode, not at import);
    a user's explicit 0 is respected and gives a clear error instead of OpenCV's."""
    import cv2  # noqa: F401  (this process: writing needs the variable, set by core's import above)
    path = cv2_write(tmp_path / "scene.exr", _scene(2.0))
    code = ("import cv2, sys; from core.detect.images import load_image\n"
            "from core.errors import ImageReadError\n"
            "try:\n    print(load_image(sys.argv[1])[20, 30].tolist())\n"
            "except ImageReadError as e:\n    print('ERR', e)\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_ENABLE_OPENEXR"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == str([int(np.round(srgb(0.25) * 255))] * 3), out.stderr
    env["OPENCV_IO_ENABLE_OPENEXR"] = "0"
    out = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.startswith("ERR Could not read scene.exr") and "OPENCV_IO_ENABLE_OPENEXR=1" in out.stdout


# ----------------------------------------------------------------------------- alpha
def test_png_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., :3] = (255, 0, 0)
    rgba[..., 3] = 255
    rgba[:, :16, 3] = 0        # fully transparent (colour ignored)
    rgba[:, 16:32, 3] = 128    # half red
    img = load_image(cv2_write(tmp_path / "cut.png", rgba))
    assert img.shape == (H, W, 3)
    assert img[5, 5].tolist() == [255, 255, 255]
    assert img[5, 20].tolist() == [255, 127, 127]   # 0 * 128/255 + 255 * 127/255
    assert img[5, 50].tolist() == [255, 0, 0]
    # a grey + alpha PNG and a palette PNG with a transparent index, through Pillow's writer
    la = np.stack([np.full((H, W), 40, np.uint8), np.where(_x < 0.5, 0, 255).astype(np.uint8)], -1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    img = load_image(tmp_path / "la.png")
    assert img[5, 2].tolist() == [255] * 3 and img[5, -2].tolist() == [40] * 3


# ----------------------------------------------------------------------------- EXIF orientation
def _with_orientation(path, pixels, orientation, **kw):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), **kw)
    return path


def test_jpeg_with_exif_orientation_6_is_turned_once(tmp_path):
    """Orientation 6: the camera was turned; shown upright, the stored top-left is the top-right."""
    path = _with_orientation(tmp_path / "phone.jpg", marker_card(), 6, quality=95)
    img = load_image(path)
    assert img.shape == (W, H, 3)                   # turned a quarter: width and height swap
    assert red_corner(img) == "tr"
    with Image.open(path) as im:                    # what Pillow shows
        assert np.abs(np.asarray(ImageOps.exif_transpose(im)).astype(int) - img).max() <= 8


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow(tmp_path, orientation):
    """Lossless PNG with EXIF: OpenCV decodes, the tag is applied here; equal to Pillow's exif_transpose."""
    path = _with_orientation(tmp_path / "o.png", marker_card(), orientation)
    with Image.open(path) as im:
        want = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    np.testing.assert_array_equal(load_image(path), want)


@pytest.mark.parametrize("suffix,kw", [(".tif", {}), (".webp", {"lossless": True}), (".jpg", {"quality": 95})])
def test_orientation_is_applied_exactly_once_per_format(tmp_path, suffix, kw):
    """OpenCV turns TIFFs itself (libtiff) but not WebP or JPEG when reading them unchanged: each must come
    out upright once, never twice or not at all (orientation 3: the marker ends bottom-right)."""
    for orientation, corner in ((3, "br"), (8, "bl")):
        img = load_image(_with_orientation(tmp_path / f"o{orientation}{suffix}", marker_card(), orientation, **kw))
        assert red_corner(img) == corner, (suffix, orientation)
        assert img.shape[:2] == ((H, W) if orientation == 3 else (W, H))


# ----------------------------------------------------------------------------- what it refuses
@pytest.mark.parametrize("case", ["corrupt", "empty", "text_as_png", "unsupported", "folder", "missing",
                                  "truncated", "tiny"])
def test_bad_files_get_clear_errors(tmp_path, case):
    if case == "corrupt":
        path, match = tmp_path / "broken.jpg", r"Could not decode broken\.jpg: the file is corrupt"
        path.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10)
    elif case == "empty":
        path, match = tmp_path / "empty.png", r"empty\.png is empty \(0 bytes\)"
        path.write_bytes(b"")
    elif case == "text_as_png":
        path, match = tmp_path / "notes.png", r"Could not decode notes\.png: .*not really a \.png image"
        path.write_text("shopping list: eggs, milk\n" * 20)
    elif case == "unsupported":
        path, match = tmp_path / "photo.heic", r"Unsupported image type '\.heic' \(photo\.heic\).*\.ppm"
        path.write_bytes(b"\x00" * 100)
    elif case == "folder":
        path, match = tmp_path / "shots.png", r"shots\.png' is a folder, not an image"
        path.mkdir()
    elif case == "missing":
        path, match = tmp_path / "gone.png", r"Image not found: .*gone\.png"
    elif case == "truncated":
        path = cv2_write(tmp_path / "half.png", np.random.default_rng(0).integers(0, 255, (256, 256, 3), np.uint8))
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        match = r"Could not decode half\.png: the file is corrupt"
    else:
        path, match = cv2_write(tmp_path / "tiny.png", CARD8[:20, :20]), r"tiny\.png is only 20x20 pixels"
    with pytest.raises(ImageReadError, match=match):
        load_image(path)


def test_file_browser_glob_lists_every_suffix_and_fits_blender():
    glob = image_file_glob()
    assert sorted(g[1:] for g in glob.split(";")) == sorted(SUPPORTED_SUFFIXES)
    assert {"*.ppm", "*.pgm", "*.exr", "*.tif", "*.webp", "*.bmp", "*.tga"} <= set(glob.split(";"))
    assert len(glob) < 256      # Blender copies filter_glob into a 256-byte buffer and cuts the rest


def test_blender_photo_browsers_show_every_supported_format():
    """Blender's own image filter hides .ppm/.pgm/.pfm/...: both photo operators add the glob."""
    bpy = pytest.importorskip("bpy")
    import blender_addon
    was = hasattr(bpy.types, "FACEFORGE_OT_reconstruct_photo")
    if not was:
        blender_addon.register()
    try:
        for op in (bpy.ops.faceforge.reconstruct_photo, bpy.ops.faceforge.reconstruct_photos):
            props = op.get_rna_type().properties
            assert props["filter_glob"].default == image_file_glob() and props["filter_image"].default
            assert "*.ppm" not in ";".join("*" + e for e in bpy.path.extensions_image)   # why the glob is needed
    finally:
        if not was:
            blender_addon.unregister()


def test_exif_focal_length(tmp_path):
    """FocalLengthIn35mmFilm -> pixels by the image diagonal (JPEG, PNG, WebP); none for a photo without
    it, a cropped photo (EXIF pixel dimensions of another aspect ratio), a garbage value or a broken file."""
    def write(name, f35=None, dims=None, size=(W, H)):
        exif = Image.Exif()
        ifd = exif.get_ifd(0x8769)
        if f35 is not None:
            ifd[0xA405] = f35
        if dims is not None:
            ifd[0xA002], ifd[0xA003] = dims
        path = tmp_path / name
        Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(path, exif=exif.tobytes())
        return path

    diag = np.hypot(W, H)
    for name in ("a.jpg", "a.png", "a.webp"):
        assert exif_focal_px(write(name, 26), W, H) == pytest.approx(26 / 43.2666 * diag, rel=1e-4), name
    # resized, or turned a quarter by its orientation tag: the same aspect ratio, the diagonal still holds
    assert exif_focal_px(write("resized.jpg", 50, dims=(4 * H, 4 * W)), W, H) == pytest.approx(50 / 43.2666 * diag, rel=1e-4)
    assert exif_focal_px(write("cropped.jpg", 50, dims=(4000, 3000), size=(W, W)), W, W) is None
    assert exif_focal_px(write("none.jpg"), W, H) is None
    assert exif_focal_px(write("zero.jpg", 0), W, H) is None
    assert exif_focal_px(write("garbage.jpg", 60000), W, H) is None
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    assert exif_focal_px(broken, W, H) is None
