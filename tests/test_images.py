"""Image IO and the checks applied to untrusted image files."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from pipelines.imaging import images
from pipelines.imaging.images import (
    ImageReadError,
    check_image,
    contact_sheet,
    encode_jpeg,
    encode_png,
    list_images,
    read_rgb,
    write_image,
)


def gradient(h: int = 48, w: int = 64) -> np.ndarray:
    """An RGB image with distinct, asymmetric content so flips and rotations show."""
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) % 256], axis=-1)
    rgb = rgb.astype(np.uint8)
    rgb[:8, :8] = (255, 0, 0)  # a red top-left corner
    return rgb


def save_pil(path: Path, img: Image.Image, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


# -- listing, reading, writing ----------------------------------------------------------------


def test_list_images_recursive_sorted_case_insensitive_skipping_hidden(tmp_path):
    for rel in [
        "b.JPG",
        "a/c.png",
        "a/z.Jpeg",
        "notes.txt",
        ".x.png.tmp",
        ".hidden.png",
        ".cache/d.png",
        "a/.e.webp",
        "deep/er/f.tiff",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert found == ["a/c.png", "a/z.Jpeg", "b.JPG", "deep/er/f.tiff"]


def test_png_roundtrip_is_lossless_and_atomic(tmp_path):
    rgb = gradient()
    write_image(tmp_path / "out" / "x.png", rgb)
    assert os.listdir(tmp_path / "out") == ["x.png"]
    assert (tmp_path / "out" / "x.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = read_rgb(tmp_path / "out" / "x.png")
    assert back.dtype == np.uint8 and np.array_equal(back, rgb)
    assert encode_png(rgb) == (tmp_path / "out" / "x.png").read_bytes()


def test_jpeg_chosen_by_suffix_and_quality_matters(tmp_path):
    rgb = gradient()
    write_image(tmp_path / "x.JPG", rgb, jpeg_quality=90)
    data = (tmp_path / "x.JPG").read_bytes()
    assert data[:3] == b"\xff\xd8\xff"
    assert len(encode_jpeg(rgb, 10)) < len(encode_jpeg(rgb, 95))
    assert np.abs(read_rgb(tmp_path / "x.JPG").astype(int) - rgb).mean() < 6


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p, rgb: write_image(p / "x.gif", rgb), "suffix"),
        (lambda p, rgb: write_image(p / "x.png", rgb, jpeg_quality=80), "jpeg_quality"),
        (lambda p, rgb: encode_jpeg(rgb, 0), "quality"),
        (lambda p, rgb: encode_png(rgb[:, :, 0]), "HxWx3 uint8"),
        (lambda p, rgb: encode_png(rgb.astype(np.float32)), "HxWx3 uint8"),
    ],
)
def test_writing_refuses_bad_requests(tmp_path, call, message):
    with pytest.raises(ValueError, match=message):
        call(tmp_path, gradient())
    assert list(tmp_path.iterdir()) == []


def test_read_rgb_names_the_file(tmp_path):
    (tmp_path / "text.png").write_text("not a picture")
    (tmp_path / "folder.png").mkdir()
    for name in ["missing.png", "text.png", "folder.png"]:
        with pytest.raises(ImageReadError, match=name):
            read_rgb(tmp_path / name)


def test_contact_sheet_fits_each_image_in_its_tile():
    tall = np.zeros((100, 50, 3), np.uint8)
    wide = np.full((20, 80, 3), 7, np.uint8)
    sheet = contact_sheet([tall, wide, tall], tile=40, columns=2)
    assert sheet.shape == (80, 80, 3) and sheet.dtype == np.uint8
    assert (sheet[:40, 10:30] == 0).all() and (sheet[:40, :5] == 255).all()
    assert (sheet[15:25, 40:80] == 7).all() and (sheet[:10, 40:80] == 255).all()
    assert (sheet[40:, 40:] == 255).all()  # the empty slot stays background


# -- check_image: refusals -----------------------------------------------------------------------


def test_empty_and_non_image_files(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello, I am a text file\n" * 20)
    assert check_image(tmp_path / "empty.png", 16) == (None, "empty file")
    assert check_image(tmp_path / "text.jpg", 16) == (None, "not an image")


def test_unsupported_format(tmp_path):
    path = save_pil(tmp_path / "anim.png", Image.fromarray(gradient()), format="GIF")
    assert check_image(path, 16) == (None, "unsupported format: GIF")


def test_corrupt_jpeg_and_png(tmp_path):
    jpg = bytearray(encode_jpeg(gradient()))
    jpg[20:200] = bytes(180)  # wipes the quantisation and Huffman tables
    (tmp_path / "bad.jpg").write_bytes(bytes(jpg))
    png = bytearray(encode_png(gradient()))
    at = png.index(b"IDAT")
    png[at + 20 : at + 40] = bytes(20)  # damaged compressed pixels, CRC no longer matches
    (tmp_path / "bad.png").write_bytes(bytes(png))
    for name in ["bad.jpg", "bad.png"]:
        rgb, reason = check_image(tmp_path / name, 16)
        assert rgb is None and reason.startswith("corrupt"), (name, reason)


@pytest.mark.parametrize(
    "name, encode, cut",
    [
        ("half.jpg", encode_jpeg, lambda n: n // 2),
        ("no-end-marker.jpg", encode_jpeg, lambda n: n - 2),
        ("half.png", encode_png, lambda n: n // 2),
        ("no-iend.png", encode_png, lambda n: n - 12),
    ],
)
def test_truncated_files(tmp_path, name, encode, cut):
    # noise, so that most of the file is pixel data and a cut lands in it
    data = encode(np.random.default_rng(0).integers(0, 256, (96, 128, 3), np.uint8))
    (tmp_path / name).write_bytes(data[: cut(len(data))])
    # OpenCV alone would return the half JPEG with grey rows and no error.
    assert check_image(tmp_path / name, 16) == (None, "truncated")


def test_too_small_is_judged_on_the_shorter_side(tmp_path):
    write_image(tmp_path / "tiny.png", gradient(15, 20))
    write_image(tmp_path / "tall.png", gradient(200, 127))
    assert check_image(tmp_path / "tiny.png", 128) == (None, "too small: 20x15 < 128")
    assert check_image(tmp_path / "tall.png", 128) == (None, "too small: 127x200 < 128")
    assert check_image(tmp_path / "tall.png", 127)[1] == "ok"


def test_decompression_bomb_refused_from_the_header(tmp_path, monkeypatch):
    # A valid PNG header declaring 20000x20000 RGB with a tiny body: 1.2 GB once decoded.
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    body = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(bytes(1000)))
        + png_chunk(b"IEND", b"")
    )
    (tmp_path / "bomb.png").write_bytes(body)

    def no_decoding(*args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(images.cv2, "imdecode", no_decoding)
    monkeypatch.setattr(images, "_integrity", no_decoding)
    rgb, reason = check_image(tmp_path / "bomb.png", 16)
    assert rgb is None and reason.startswith("too large"), reason


def test_pixel_limit_is_configurable(tmp_path):
    write_image(tmp_path / "x.png", gradient(100, 200))
    refused = (None, "too large: 200x100 pixels")
    assert check_image(tmp_path / "x.png", 16, max_pixels=19_999) == refused
    assert check_image(tmp_path / "x.png", 16, max_pixels=20_000)[1] == "ok"


def test_unreadable_entries(tmp_path, monkeypatch):
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "broken.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(tmp_path / "pipe.png")
    assert check_image(tmp_path / "folder.png", 16) == (None, "unreadable: is a directory")
    assert check_image(tmp_path / "broken.png", 16) == (
        None,
        "unreadable: No such file or directory",
    )
    assert check_image(tmp_path / "pipe.png", 16) == (None, "unreadable: not a regular file")

    write_image(tmp_path / "locked.png", gradient())

    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)
    assert check_image(tmp_path / "locked.png", 16) == (None, "unreadable: Permission denied")


# -- check_image: conversions ----------------------------------------------------------------------


def test_plain_rgb_png_is_ok_and_exact(tmp_path):
    rgb = gradient()
    write_image(tmp_path / "x.png", rgb)
    out, note = check_image(tmp_path / "x.png", 16)
    assert note == "ok" and np.array_equal(out, rgb)


def test_grayscale_becomes_rgb(tmp_path):
    gray = gradient()[:, :, 1]
    save_pil(tmp_path / "g.png", Image.fromarray(gray, "L"))
    out, note = check_image(tmp_path / "g.png", 16)
    assert note == "converted: grayscale"
    assert out.shape == (*gray.shape, 3)
    assert all(np.array_equal(out[:, :, c], gray) for c in range(3))


def test_16_bit_png_is_scaled_with_rounding_not_truncated(tmp_path):
    values = np.array([[0, 128, 129, 257, 32896, 65534, 65535, 1000]], np.uint16)
    deep = np.repeat(np.repeat(values, 4, axis=0), 4, axis=1)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    out, note = check_image(tmp_path / "deep.png", 4)
    assert note == "converted: 16-bit, grayscale"
    expected = np.round(values / 257.0).astype(np.uint8)  # 1000 -> 4; the high byte alone gives 3
    assert np.array_equal(out[0, ::4, 0], expected[0])

    colour = np.zeros((8, 8, 3), np.uint16)
    colour[..., 2] = 65535  # red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "red16.png"), colour)
    out, note = check_image(tmp_path / "red16.png", 4)
    assert note == "converted: 16-bit" and (out == (255, 0, 0)).all()


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :8, 3] = 255  # opaque left half keeps its colour
    rgba[:, 8:12, 3] = 0  # transparent: white
    rgba[:, 12:, 3] = 128  # half: halfway to white
    save_pil(tmp_path / "a.png", Image.fromarray(rgba, "RGBA"))
    out, note = check_image(tmp_path / "a.png", 4)
    assert note == "converted: alpha composited on white"
    assert (out[:, :8] == (200, 0, 0)).all() and (out[:, 8:12] == 255).all()
    assert np.abs(out[0, 12].astype(int) - (228, 127, 127)).max() <= 1


def test_opaque_alpha_is_dropped(tmp_path):
    rgba = np.dstack([gradient(), np.full((48, 64), 255, np.uint8)])
    save_pil(tmp_path / "a.png", Image.fromarray(rgba, "RGBA"))
    out, note = check_image(tmp_path / "a.png", 16)
    assert note == "converted: opaque alpha dropped" and np.array_equal(out, gradient())


def test_palette_with_transparency(tmp_path):
    index = np.zeros((16, 16), np.uint8)
    index[:, 8:] = 1
    pal = Image.fromarray(index, "P")
    pal.putpalette([0, 0, 255, 10, 200, 10] + [0] * 762)
    save_pil(tmp_path / "p.png", pal, transparency=0)
    out, note = check_image(tmp_path / "p.png", 4)
    assert note == "converted: alpha composited on white"
    assert (out[:, :8] == 255).all() and (out[:, 8:] == (10, 200, 10)).all()


def test_cmyk_jpeg_keeps_its_colours(tmp_path):
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[:16] = (220, 30, 30)
    rgb[16:] = (30, 60, 200)
    img = Image.fromarray(rgb).convert("CMYK")
    save_pil(tmp_path / "cmyk.jpg", img, quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    out, note = check_image(tmp_path / "cmyk.jpg", 16)
    assert note == "converted: CMYK"
    reference = np.asarray(img.convert("RGB")).astype(int)
    assert np.abs(out.astype(int) - reference).mean() < 8
    assert np.abs(out[4, 4].astype(int) - (220, 30, 30)).max() < 25


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, orientation):
    img = Image.fromarray(gradient())
    exif = img.getexif()
    exif[images.EXIF_ORIENTATION] = orientation
    save_pil(tmp_path / "o.png", img, exif=exif.tobytes())  # lossless, so pixels compare exactly
    out, note = check_image(tmp_path / "o.png", 16)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")).convert("RGB"))
    assert np.array_equal(out, upright)
    assert note == ("ok" if orientation == 1 else f"converted: EXIF orientation {orientation}")


def test_exif_rotated_jpeg(tmp_path):
    img = Image.fromarray(gradient(48, 64))
    exif = img.getexif()
    exif[images.EXIF_ORIENTATION] = 6  # stored sideways; viewers turn it 90 degrees clockwise
    save_pil(tmp_path / "phone.jpg", img, quality=95, exif=exif.tobytes())
    out, note = check_image(tmp_path / "phone.jpg", 16)
    assert note == "converted: EXIF orientation 6"
    assert out.shape == (64, 48, 3)
    # the red corner, stored top-left, is now top-right
    assert out[2, 45, 0] > 200 and out[2, 45, 1] < 60
    assert out[2, 2, 0] < 200 or out[2, 2, 1] > 60
