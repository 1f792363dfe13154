"""Odd inputs: EXIF orientation, alpha, grayscale, palette, 16-bit, CMYK, tiny, huge."""

import io

import numpy as np
import pytest
from PIL import Image

from tiny import photo
from tokcodec.imageio import ImageError, load_image


def png_bytes(im, fmt="PNG", **kw):
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_exif_rotated_jpeg_comes_back_upright(codec):
    im = photo(120, 64)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = png_bytes(im, "JPEG", exif=exif.tobytes())
    loaded = load_image(data)
    assert loaded.size == (64, 120)
    r = codec.encode(loaded, None, None, 16, "entire")
    assert codec.decode(r.data).size == (64, 120)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "CMYK", "I;16", "1"])
def test_modes_round_trip(codec, mode):
    base = photo(70, 50)
    if mode == "I;16":
        arr = (np.asarray(base.convert("L"), dtype=np.uint16) * 257)
        im = Image.fromarray(arr)
        assert im.mode.startswith("I;16")
    elif mode == "P":
        im = base.convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        im = base.convert(mode)
    fmt = "TIFF" if mode == "CMYK" else "PNG"
    loaded = load_image(png_bytes(im, fmt))
    assert loaded.mode == "RGB" and loaded.size == (70, 50)
    r = codec.encode(loaded, None, None, 16, "entire")
    assert codec.decode(r.data).size == (70, 50)


def test_16_bit_scaled_not_clipped():
    arr = np.full((8, 8), 65535, dtype=np.uint16)
    assert np.asarray(load_image(png_bytes(Image.fromarray(arr))))[0, 0, 0] == 255


def test_alpha_composited_on_white():
    im = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert tuple(np.asarray(load_image(png_bytes(im)))[0, 0]) == (255, 255, 255)


def test_pixel_limit_and_garbage():
    with pytest.raises(ImageError, match="over the limit"):
        load_image(png_bytes(photo(100, 100)), max_pixels=5000)
    with pytest.raises(ImageError, match="not an image"):
        load_image(b"GIF89a-but-not-really")


def test_unreadable_data_is_named_plainly():
    # (a .tkc given as an image gets a hint: tested through the CLI in test_cli, in a process
    # where tokcodec.pillow, which lets Pillow open .tkc files, is not registered)
    with pytest.raises(ImageError, match="^photo.png is empty, not an image$"):
        load_image(b"", name="photo.png")
    for data in (b"\x00" * 50, png_bytes(photo(30, 20))[:40]):  # unknown format; truncated PNG
        with pytest.raises(ImageError) as e:
            load_image(data, name="photo.png")
        assert str(e.value).startswith("photo.png is not an image") and "BytesIO" not in str(e.value)


def test_written_files_get_umask_permissions(tmp_path):
    import os

    from tokcodec.imageio import atomic_write
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "new.bin", b"abc")
        (tmp_path / "old.bin").write_bytes(b"")
        (tmp_path / "old.bin").chmod(0o604)
        atomic_write(tmp_path / "old.bin", b"abc")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "new.bin").st_mode & 0o777 == 0o640
    assert os.stat(tmp_path / "old.bin").st_mode & 0o777 == 0o604
    assert (tmp_path / "old.bin").read_bytes() == b"abc"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["new.bin", "old.bin"]
