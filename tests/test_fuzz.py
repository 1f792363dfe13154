"""Property-based fuzzing of the decoder: mutated and random .tkc files never crash it,
never hang it, and never make it allocate past the pixel limit."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiny import photo
from tokcodec.codec import CodecError
from tokcodec.container import FormatError, pack, unpack
from tokcodec.imageio import ImageError

EXPECTED = (FormatError, CodecError, ImageError)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def good(codec):
    return codec.encode(photo(96, 64), None, None, 64, "edge", 0.4).data


def decode_or_reject(codec, data):
    try:
        img = codec.decode(data, max_pixels=1 << 16)
    except EXPECTED:
        return None
    assert img.size[0] * img.size[1] <= 1 << 16
    return img


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(codec, data):
    decode_or_reject(codec, data)


@FUZZ
@given(st.data())
def test_mutations_of_a_valid_file(codec, good, data):
    buf = bytearray(good)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        i = data.draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del buf[i:]
        elif op == "insert":
            buf[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and buf:
            del buf[i]
    decode_or_reject(codec, bytes(buf))


@FUZZ
@given(st.data())
def test_valid_crc_but_mutated_fields(codec, good, data):
    """Mutations that keep the file CRC valid reach the deeper checks (header, payload, tokens)."""
    c = unpack(good)
    payload = bytearray(c.payload)
    if payload and data.draw(st.booleans()):
        payload[data.draw(st.integers(0, len(payload) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    h = c.header
    h.width = data.draw(st.sampled_from([h.width, 1, 0x3FFF, 65535]))
    h.height = data.draw(st.sampled_from([h.height, 1, 0x3FFF, 65535]))
    h.mode = data.draw(st.sampled_from(["entire", "edge", "edge_more", "checkerboard"]))
    h.codebook = data.draw(st.sampled_from([16, 64, 256, 2]))
    c.payload = bytes(payload)
    decode_or_reject(codec, pack(c))
