"""Newer fidelity decoders (weights/fidelity.safetensors, format 1.3 header field `decoder`):
a file names the decoder it was encoded against and decodes with that one; older files keep
decoding with the base file's decoder, to the same pixels as before."""

import shutil

import numpy as np
import pytest

from conftest import DATA
from tiny import make_decoder, make_fidelity, photo


@pytest.fixture(scope="module")
def fid_dir(tmp_path_factory, tiny_weights):
    d = tmp_path_factory.mktemp("fid")
    shutil.copy(tiny_weights / "tokc.safetensors", d / "tokc.safetensors")
    make_fidelity(d, number=1, seed=3)
    return d


@pytest.fixture(scope="module")
def fid_codec(fid_dir):
    from tokcodec.codec import Codec
    return Codec(str(fid_dir), "cpu")


@pytest.fixture(scope="module")
def fid_file(fid_codec):
    return fid_codec.encode(photo(96, 64, seed=4), nbytes=200).data


def px(img) -> np.ndarray:
    return np.asarray(img)


def test_encoder_names_its_newest_fidelity_decoder(fid_codec, fid_file, codec):
    from tokcodec import container
    assert fid_codec.model.fidelity == 1 and codec.model.fidelity == 0
    assert fid_codec.model.model_id == codec.model.model_id  # a decoder never changes the model id
    hd = container.unpack(fid_file).header
    assert (hd.minor, hd.decoder) == (3, 1)
    old = container.unpack(codec.encode(photo(96, 64, seed=4), nbytes=200).data).header
    assert (old.minor, old.decoder) == (3, 0)


def test_file_decodes_with_the_decoder_it_names(fid_codec, fid_file):
    c = fid_codec.read(fid_file)
    tokens, keep = fid_codec.decode_tokens(c)
    full = fid_codec.generate(tokens, keep, c.header.codebook, 0, 0.0) if not keep.all() else tokens
    size = (c.header.width, c.header.height)
    with_1 = px(fid_codec.render(full, c.header.codebook, size, 0.0, 0, 1))
    with_0 = px(fid_codec.render(full, c.header.codebook, size, 0.0, 0, 0))
    assert not np.array_equal(with_0, with_1)  # the two decoders differ on this file
    corr = fid_codec.finish_pixels(fid_codec.render(full, c.header.codebook, size, 0.0, 0, 1),
                                   __import__("tokcodec.codec", fromlist=["read_correction"]).read_correction(c))
    assert np.array_equal(px(fid_codec.decode(fid_file, realism=0.0)), px(corr))


def test_weights_without_the_named_decoder_refuse_the_file(codec, fid_file):
    from tokcodec.errors import CodecError
    with pytest.raises(CodecError, match="fidelity decoder 1"):
        codec.decode(fid_file)


def test_older_files_decode_as_before(fid_codec, codec):
    data = (DATA / "golden_edge_k64.tkc").read_bytes()  # written before 1.3: decoder 0
    assert np.array_equal(px(fid_codec.decode(data, seed=2)), px(codec.decode(data, seed=2)))


def test_realism_bands_over_the_named_decoder(tmp_path, tiny_weights, fid_file):
    from tokcodec.codec import Codec
    shutil.copy(tiny_weights / "tokc.safetensors", tmp_path / "tokc.safetensors")
    make_fidelity(tmp_path, number=1, seed=3)
    make_decoder(tmp_path)
    c = Codec(str(tmp_path), "cpu")
    a, b = px(c.decode(fid_file, seed=1, realism=0.0)), px(c.decode(fid_file, seed=1, realism=0.5))
    assert a.shape == b.shape and not np.array_equal(a, b)
    # the low band is decoder 1's picture: the two stay close where realism only adds detail
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 40


@pytest.mark.parametrize("kind", ["other model", "bad number"])
def test_mismatched_fidelity_files_are_refused(tmp_path, tiny_weights, kind):
    from tokcodec import weights as W
    shutil.copy(tiny_weights / "tokc.safetensors", tmp_path / "tokc.safetensors")
    if kind == "other model":
        make_fidelity(tmp_path, model=b"\0\0\0\0")
        match = "trained for model 00000000"
    else:
        make_fidelity(tmp_path, number=0)
        match = "outside 1..255"
    with pytest.raises(W.WeightsError, match=match):
        W.load(tmp_path)


def test_decoder_field_round_trips_and_needs_minor_3():
    from tokcodec.container import Container, Header, pack, unpack
    h = Header(96, 64, b"\1\2\3\4", 64, "edge", 7, minor=3, mask_check=9, decoder=200)
    c = unpack(pack(Container(h, b"\0" * 4)))
    assert (c.header.minor, c.header.mask_check, c.header.decoder) == (3, 9, 200)
    assert len(pack(Container(h, b"\0" * 4))) == len(pack(Container(
        Header(96, 64, b"\1\2\3\4", 64, "edge", 7, minor=2, mask_check=9), b"\0" * 4))) + 1
    with pytest.raises(ValueError, match="minor >= 3"):
        pack(Container(Header(96, 64, b"\1\2\3\4", 64, "edge", 7, minor=2, mask_check=9, decoder=1), b""))
