"""The Pillow plugin, used only through Pillow's own calls (weights via TOKC_WEIGHTS)."""

import numpy as np
import pytest
from PIL import Image

import tokcodec
import tokcodec.pillow
from tiny import photo


@pytest.fixture(autouse=True)
def tiny_model(monkeypatch, tiny_weights):
    monkeypatch.setenv("TOKC_WEIGHTS", str(tiny_weights))
    saved = dict(tokcodec.pillow.options)
    yield
    tokcodec.pillow.options.clear()
    tokcodec.pillow.options.update(saved)


@pytest.fixture(scope="module")
def tkc_file(tmp_path_factory, tiny_weights):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOKC_WEIGHTS", str(tiny_weights))
        path = tmp_path_factory.mktemp("pil") / "a.tkc"
        photo(96, 64, seed=2).save(path, bpp=0.3)  # Pillow picks the format from the extension
    return path


def test_extension_and_mime_are_registered():
    assert Image.registered_extensions()[".tkc"] == "TKC"
    assert Image.MIME["TKC"] == "image/x-tkc"


def test_save_fits_the_target_and_open_decodes(tkc_file, tmp_path):
    assert tkc_file.read_bytes()[:4] == b"\x89TKC"
    assert 8 * tkc_file.stat().st_size / (96 * 64) <= 0.3
    with Image.open(tkc_file) as im:
        assert (im.format, im.size, im.mode) == ("TKC", (96, 64), "RGB")
        im.load()
        assert np.asarray(im).shape == (64, 96, 3)
        im.save(tmp_path / "b.png")
    with Image.open(tmp_path / "b.png") as back:
        assert back.size == (96, 64)


def test_bytes_target_and_other_modes(tmp_path):
    rgba = photo(80, 48).convert("RGBA")
    rgba.save(tmp_path / "c.tkc", bytes=120)
    assert (tmp_path / "c.tkc").stat().st_size <= 120
    photo(64, 64).convert("L").save(tmp_path / "d.tkc", codebook=16, mode="entire", bpp=None)
    with Image.open(tmp_path / "d.tkc") as im:
        assert im.info["tkc_codebook"] == 16 and im.info["tkc_mask_mode"] == "entire"


def test_decoding_defaults_and_per_image_options(tmp_path):
    photo(96, 64).save(tmp_path / "e.tkc", codebook=64, mode="edge_more", quantile=0.0, bpp=None)

    def pixels(**opts):
        with Image.open(tmp_path / "e.tkc") as im:
            im.decode_options.update(opts)
            return np.asarray(im).tobytes()

    tokcodec.pillow.set_options(temperature=1.0, seed=1)
    a, b = pixels(), pixels(seed=2)
    tokcodec.pillow.register(seed=2)  # register() sets the defaults too
    assert pixels() == b != a
    assert pixels(temperature=0.0) == pixels(temperature=0.0, seed=5)


def test_damaged_file_raises_tokc_errors(tkc_file, tmp_path):
    data = bytearray(tkc_file.read_bytes())
    data[-1] ^= 1
    (tmp_path / "bad.tkc").write_bytes(bytes(data))
    with pytest.raises(tokcodec.FormatError, match="CRC"):
        Image.open(tmp_path / "bad.tkc")
    with Image.open(tkc_file) as im:
        im.decode_options["seed"] = -1
        with pytest.raises(tokcodec.ArgumentError, match="seed"):
            im.load()
    with pytest.raises(tokcodec.TokcError, match="bpp"):
        photo(32, 32).save(tmp_path / "f.tkc", bpp=-1)
    with pytest.raises(tokcodec.ArgumentError, match="unknown option"):
        tokcodec.pillow.set_options(sed=1)


def test_model_mismatch_at_load(tkc_file, monkeypatch, fresh_weights):
    monkeypatch.setenv("TOKC_WEIGHTS", str(fresh_weights))
    with Image.open(tkc_file) as im:
        with pytest.raises(tokcodec.CodecError, match="model"):
            im.load()
