"""The public API raises only tokc's exceptions, and names the argument and its range."""

import math

import pytest

import tokcodec
from tiny import photo
from tokcodec import errors
from tokcodec.codec import describe


@pytest.fixture(scope="module")
def good(codec):
    return codec.encode(photo(96, 64), None, None, 64, "edge", 0.4).data


@pytest.fixture
def api(tiny_weights):
    w = str(tiny_weights)
    return (lambda data, *a, **kw: tokcodec.decode(data, *a, weights=w, **kw),
            lambda img, *a, **kw: tokcodec.encode(img, *a, weights=w, **kw))


def test_family():
    assert issubclass(tokcodec.FormatError, tokcodec.TokcError) and issubclass(tokcodec.FormatError, ValueError)
    assert issubclass(tokcodec.CodecError, tokcodec.TokcError) and issubclass(tokcodec.CodecError, RuntimeError)
    assert issubclass(tokcodec.ArgumentTypeError, TypeError) and issubclass(tokcodec.ArgumentTypeError, ValueError)
    for name in ("WeightsError", "ImageError"):
        assert issubclass(getattr(tokcodec, name), tokcodec.TokcError)
    from tokcodec.entropy import DecodeError
    assert issubclass(DecodeError, tokcodec.FormatError)
    from tokcodec.weights import WeightsError
    assert issubclass(tokcodec.WeightsError, WeightsError)  # old `except` clauses still work


@pytest.mark.parametrize("kw,exc,words", [
    ({"seed": -1}, errors.ArgumentError, "seed must be an integer 0..18446744073709551615"),
    ({"seed": 2 ** 64}, errors.ArgumentError, "seed"),
    ({"seed": 1.5}, errors.ArgumentTypeError, "seed"),
    ({"seed": True}, errors.ArgumentTypeError, "seed"),
    ({"seed": "7"}, errors.ArgumentTypeError, "seed"),
    ({"temperature": math.nan}, errors.ArgumentError, r"temperature must be a finite number in \[0, 5\]"),
    ({"temperature": math.inf}, errors.ArgumentError, "temperature"),
    ({"temperature": 1e300}, errors.ArgumentError, "temperature"),
    ({"temperature": -0.5}, errors.ArgumentError, "temperature"),
    ({"temperature": None}, errors.ArgumentTypeError, "temperature"),
    ({"realism": 1.5}, errors.ArgumentError, r"realism must be a finite number in \[0, 1\]"),
    ({"realism": "x"}, errors.ArgumentTypeError, "realism"),
    ({"max_pixels": 0}, errors.ArgumentError, "max_pixels must be an integer >= 1"),
    ({"max_pixels": 1e6}, errors.ArgumentTypeError, "max_pixels"),
    ({"device": "tpu"}, errors.ArgumentError, "device"),
    ({"max_pixels": 10}, errors.FormatError, "over the limit of 10"),
])
def test_bad_decode_arguments(api, good, kw, exc, words):
    with pytest.raises(exc, match=words):
        api[0](good, **kw)


@pytest.mark.parametrize("data,exc", [("not bytes", errors.ArgumentTypeError), (None, errors.ArgumentTypeError),
                                      (b"", errors.FormatError), (b"\x89TKC" + b"\0" * 30, errors.FormatError)])
def test_bad_data(api, data, exc):
    with pytest.raises(exc):
        api[0](data)
    with pytest.raises(exc):
        describe(data)


@pytest.mark.parametrize("kw,exc,words", [
    ({"bpp": 0}, errors.ArgumentError, r"bpp must be a finite number > 0"),
    ({"bpp": math.nan}, errors.ArgumentError, "bpp"),
    ({"bpp": "0.1"}, errors.ArgumentTypeError, "bpp"),
    ({"nbytes": 0}, errors.ArgumentError, "nbytes must be an integer >= 1"),
    ({"nbytes": 10.5}, errors.ArgumentTypeError, "nbytes"),
    ({"codebook": 1024}, errors.ArgumentError, "codebook must be one of 16, 64, got 1024"),
    ({"mode": "bogus"}, errors.ArgumentError, "mode must be one of"),
    ({"quantile": 2}, errors.ArgumentError, r"quantile must be a finite number in \[0, 1\]"),
    ({"max_pixels": 100}, tokcodec.ImageError, "over the limit of 100"),
    ({"nbytes": 20}, errors.CodecError, "cannot be reached"),
])
def test_bad_encode_arguments(api, kw, exc, words):
    with pytest.raises(exc, match=words):
        api[1](photo(64, 48), **kw)


def test_bad_images_and_weights(api, tmp_path):
    with pytest.raises(errors.ArgumentTypeError, match="image"):
        api[1](12345)
    with pytest.raises(tokcodec.ImageError, match="no such file"):
        api[1](str(tmp_path / "missing.png"))
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(tokcodec.ImageError):
        api[1](str(tmp_path / "x.png"))
    with pytest.raises(tokcodec.WeightsError):
        tokcodec.encode(photo(32, 32), weights=str(tmp_path / "nowhere"))
    with pytest.raises(errors.ArgumentTypeError, match="weights"):
        tokcodec.encode(photo(32, 32), weights=3)


def test_a_call_that_does_not_fit_the_signature_is_the_callers_error(api, good):
    """A misspelt keyword is an ArgumentTypeError (a TypeError) naming it, not a CodecError
    asking for a bug report."""
    for call, name in ((lambda: api[1](photo(32, 32), bpp=0.03, correct=False), "correct"),
                       (lambda: api[0](good, temprature=1.0), "temprature"),
                       (lambda: describe(good, 10, 20), None)):
        with pytest.raises(errors.ArgumentTypeError) as e:
            call()
        assert isinstance(e.value, TypeError) and "please report" not in str(e.value)
        assert name is None or f"unexpected keyword argument '{name}'" in str(e.value)


def test_encode_accepts_paths_and_bytes(api, tmp_path):
    photo(64, 48).save(tmp_path / "p.png")
    a = api[1](str(tmp_path / "p.png"), 0.3)
    assert a == api[1]((tmp_path / "p.png").read_bytes(), 0.3) == api[1](tmp_path / "p.png", 0.3)
    assert api[0](a).size == (64, 48)


def test_describe_never_leaks_decode_errors():
    """A 1x1 edge-mode file whose payload is eight 0xFF bytes (issue 16) fails as a FormatError."""
    from tokcodec.container import Container, Header, pack
    data = pack(Container(Header(1, 1, b"\0\1\2\3", 16, "edge", 0), b"\xff" * 8))
    with pytest.raises(tokcodec.FormatError):
        describe(data)


def test_describe_refuses_what_decode_refuses_without_the_model(codec, good):
    from tokcodec.container import pack, unpack
    c = unpack(good)
    c.header.coder_id = 9
    with pytest.raises(tokcodec.CodecError, match="coder 9"):
        describe(pack(c))
    big = codec.encode(photo(640, 480), None, None, 64, "edge", 0.5).data  # a 300-bit block map
    c = unpack(big)
    c.payload = c.payload[:8]
    with pytest.raises(tokcodec.FormatError, match="damaged"):
        describe(pack(c))
    with pytest.raises(tokcodec.TokcError):
        codec.decode(pack(c))
    info = describe(good)
    assert "model id" in info["not_checked"] and "CRC" in info["not_checked"]
