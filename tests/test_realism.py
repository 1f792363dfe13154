"""The realism-conditioned decoder and the model id that survives decoder upgrades."""

import hashlib
import shutil

import numpy as np
import pytest
import torch

from conftest import ROOT
from tiny import make_decoder, make_weights, photo

V2_FILE = "v2_703cb306_edge_k64.tkc"  # made by tokc 0.1.0 with weights v2 (model 703cb306)


@pytest.fixture(scope="module")
def realism_codec(tmp_path_factory, tiny_weights):
    from tokcodec.codec import Codec
    d = tmp_path_factory.mktemp("rw")
    shutil.copy(tiny_weights / "tokc.safetensors", d / "tokc.safetensors")
    make_decoder(d)
    return Codec(str(d), "cpu")


@pytest.fixture(scope="module")
def tiny_file(codec):
    return codec.encode(photo(96, 64, seed=4), None, None, 64, "checkerboard").data


def pixels(img) -> bytes:
    return np.asarray(img).tobytes()


def test_decoder_file_does_not_change_model_id(codec, realism_codec, tiny_file):
    assert realism_codec.model.model_id == codec.model.model_id
    assert realism_codec.model.realism and not codec.model.realism
    # a file written with the old decoder decodes with the new one, to the same tokens
    a = codec.decode_tokens(codec.read(tiny_file))[0]
    b = realism_codec.decode_tokens(realism_codec.read(tiny_file))[0]
    assert np.array_equal(a, b)


def test_same_seed_and_realism_same_pixels(realism_codec, tiny_file):
    a = realism_codec.decode(tiny_file, seed=5, realism=0.8)
    b = realism_codec.decode(tiny_file, seed=5, realism=0.8)
    assert pixels(a) == pixels(b)
    assert pixels(a) != pixels(realism_codec.decode(tiny_file, seed=6, realism=0.8))  # noise follows the seed
    assert pixels(a) != pixels(realism_codec.decode(tiny_file, seed=5, realism=0.2))


def test_realism_zero_draws_no_noise(realism_codec, tiny_file):
    a = realism_codec.decode(tiny_file, seed=1, realism=0.0)
    b = realism_codec.decode(tiny_file, seed=2, realism=0.0)
    assert pixels(a) == pixels(b)


def test_pixels_do_not_depend_on_thread_count(realism_codec, tiny_file):
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = realism_codec.decode(tiny_file, seed=3, realism=1.0)
        torch.set_num_threads(max(2, n))
        b = realism_codec.decode(tiny_file, seed=3, realism=1.0)
    finally:
        torch.set_num_threads(n)
    assert pixels(a) == pixels(b)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "x"])
def test_realism_out_of_range_is_refused(realism_codec, tiny_file, bad):
    with pytest.raises(ValueError, match="realism"):
        realism_codec.decode(tiny_file, realism=bad)


def test_decoder_for_another_model_is_refused(tmp_path, tiny_weights):
    from tokcodec.weights import WeightsError, load
    shutil.copy(tiny_weights / "tokc.safetensors", tmp_path / "tokc.safetensors")
    make_decoder(tmp_path, model=b"\x00\x11\x22\x33")
    with pytest.raises(WeightsError, match="00112233"):
        load(tmp_path)


def test_legacy_id_still_accepted_but_other_models_refused(codec, fresh_weights):
    from tokcodec.codec import Codec, CodecError
    from tokcodec.container import unpack
    golden = (ROOT / "tests" / "data" / "golden_edge_k64.tkc").read_bytes()
    old = unpack(golden).header.model_id  # written when the id covered every tensor
    assert old == codec.model.legacy_id != codec.model.model_id
    assert codec.model.accepts(old)
    with pytest.raises(CodecError, match="model"):
        Codec(str(fresh_weights), "cpu").decode(golden)


def test_v2_file_decodes_with_shipped_weights():
    """A file written by weights v2 (model 703cb306) decodes with the weights shipped now,
    to the tokens v2 decoded (hashes recorded when the file was made)."""
    from tokcodec.codec import Codec
    from tokcodec.weights import WeightsError
    try:
        c = Codec(None, "cpu")
    except WeightsError as e:
        pytest.skip(f"no shipped weights: {e}")
    data = (ROOT / "tests" / "data" / V2_FILE).read_bytes()
    cont = c.read(data)
    tokens, keep = c.decode_tokens(cont)
    assert (tokens.shape, int(keep.sum())) == ((10, 16), 104)

    def h(t):
        return hashlib.sha256(t.astype("<i4").tobytes()).hexdigest()[:16]
    coder = cont.header.coder_id  # 1: sampling follows the legacy (numpy PCG64) rule
    g = c.for_model(cont.header.model_id).generate  # the prior the file names (weights v5: not the newest)
    assert h(g(tokens, keep, 64, 0, 0.0, coder)) == "ec0d1ace754307c4"
    assert h(g(tokens, keep, 64, 7, 1.0, coder)) == "3b9a7146712c9941"
    img = c.decode(data, seed=7)
    assert img.size == (256, 160)
    assert pixels(img) == pixels(c.decode(data, seed=7))


@pytest.mark.parametrize("realism", [0.0, 0.6, 1.0])
def test_large_grids_render_in_windows_to_the_same_pixels(realism_codec, monkeypatch, realism):
    """Grids over TILE_MAX_TOKENS are rendered in windows with TILE_MARGIN tokens of context
    (bounded memory, issue 15): the pixels, realism noise included, are those of one pass. With
    too little context the seams show, so the comparison can fail."""
    from tokcodec import codec as C
    tokens = np.random.default_rng(7).integers(0, 64, (44, 52))
    size = (52 * 16 - 7, 44 * 16 - 5)
    whole = np.asarray(realism_codec.render(tokens, 64, size, realism, 5))
    monkeypatch.setattr(C, "TILE_MAX_TOKENS", 0)
    monkeypatch.setattr(C, "TILE", 12)
    tiled = np.asarray(realism_codec.render(tokens, 64, size, realism, 5))
    assert tiled.shape == whole.shape
    assert np.abs(tiled.astype(int) - whole).max() <= 1 and (tiled != whole).mean() < 1e-4
    monkeypatch.setattr(C, "TILE_MARGIN", 1)
    seams = np.asarray(realism_codec.render(tokens, 64, size, realism, 5))
    assert (seams != whole).mean() > 1e-3


def test_bfloat16_pixels_only_where_no_tolerance_applies(realism_codec, tiny_file, monkeypatch):
    """Where the CPU computes bfloat16 natively (precision.py), a decode at realism > 0 draws
    its pixels in it: close to float32's, deterministic. At realism 0 (the spec's tolerance,
    section 8.6) the decode is float32 whatever the hardware: the same pixels either way."""
    from tokcodec import precision
    here = precision.native_bf16("cpu")

    def decode(native: bool, realism: float) -> np.ndarray:
        monkeypatch.setattr(precision, "native_bf16", lambda device_type: native)
        return np.asarray(realism_codec.decode(tiny_file, seed=2, realism=realism)).astype(int)
    assert np.array_equal(decode(True, 0.0), decode(False, 0.0))
    lo, hi = decode(False, 0.6), decode(True, 0.6)
    assert np.array_equal(hi, decode(True, 0.6))
    psnr = 10 * np.log10(255 ** 2 / max(np.square(hi - lo).mean(), 1e-9))
    assert psnr > 40
    if here:  # the autocast really ran: other roundings
        assert (hi != lo).any()


def test_decoder_without_gradients_gives_the_training_pass_values(realism_codec):
    """The pixel decoder works in place when no gradient is taken (ResBlock, the output
    convolution's SiLU, the final rescaling and clamp): the same values as with gradients."""
    tok = realism_codec.model.tokenizer
    t = torch.randint(0, 64, (1, 6, 5), generator=torch.Generator().manual_seed(2))
    z = tok.embed(t, 64)
    for realism in (0.0, 0.7):
        with torch.enable_grad():
            want = tok.decoder(z, realism, torch.Generator().manual_seed(1)).clamp(0, 1).detach()
        assert torch.equal(tok.decode(t, 64, realism, torch.Generator().manual_seed(1)), want)
