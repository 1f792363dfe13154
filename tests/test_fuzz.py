"""Property-based fuzzing of the decoder: mutated and random .tkc files never crash it, never
hang it, never make it allocate past the pixel limit, and fail only with tokc's exceptions.

Each decode runs under a watchdog (`bounded`): a case that is still running after
CASE_LIMIT_S seconds fails as a hang. The limit is far above what any case needs (the tiny
model decodes these files in milliseconds), so it catches runaway work, not slowness."""

import signal
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tokcodec
from tiny import photo
from tokcodec.codec import describe
from tokcodec.container import pack, unpack

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
CASE_LIMIT_S = 30
BIG = 64_000_000  # the default pixel limit: hostile headers may declare up to 8000x8000


class Hang(Exception):
    pass


@contextmanager
def bounded(seconds: float, what: str):
    def alarm(signum, frame):
        raise Hang(f"{what} still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def good(codec):
    return codec.encode(photo(96, 64), None, None, 64, "edge", 0.4).data


def decode_or_reject(codec, data, max_pixels=1 << 16):
    """Decode with a watchdog; only TokcError may come out, and never an image over the limit."""
    with bounded(CASE_LIMIT_S, f"decoding {data[:40].hex()}..."):
        try:
            describe(data, max_pixels)
        except tokcodec.TokcError:
            pass
        try:
            img = codec.decode(data, max_pixels=max_pixels)
        except tokcodec.TokcError:
            return None
    assert img.size[0] * img.size[1] <= max_pixels
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
    """Mutations that keep the file CRC valid reach the deeper checks: dimensions up to the
    default 64-megapixel limit, codebook, mask mode, coder id, and a payload cut, extended or
    damaged. Work must stay bounded by the payload, whatever the header declares."""
    c = unpack(good)
    payload = bytearray(c.payload)
    op = data.draw(st.sampled_from(["keep", "flip", "cut", "extend", "empty"]))
    if op == "flip" and payload:
        payload[data.draw(st.integers(0, len(payload) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    elif op == "cut":
        del payload[4 * data.draw(st.integers(0, len(payload) // 4)):]
    elif op == "extend":
        payload += data.draw(st.binary(min_size=4, max_size=64))
    elif op == "empty":
        payload = bytearray()
    h = c.header
    h.width = data.draw(st.sampled_from([h.width, 1, 33, 1536, 0x3FFF, 8000, 65535]))
    h.height = data.draw(st.sampled_from([h.height, 1, 977, 1024, 8000, 16256]))
    if h.width * h.height > BIG:
        h.height = BIG // h.width
    h.mode = data.draw(st.sampled_from(["entire", "edge", "edge_more", "checkerboard"]))
    h.codebook = data.draw(st.sampled_from([16, 64, 256, 2]))
    h.coder_id = data.draw(st.sampled_from([h.coder_id, 1, 3]))
    c.payload = bytes(payload[: len(payload) // 4 * 4])
    decode_or_reject(codec, pack(c), BIG)


def test_payload_cut_at_every_word_is_refused(codec):
    """A valid file with its payload cut short, at any word, is refused (the decoder follows
    the coder's state and stops where the payload runs out)."""
    c = unpack(codec.encode(photo(128, 96), None, None, 64, "edge", 0.5).data)
    full = c.payload
    for n in range(0, len(full), 4):
        c.payload = full[:n]
        with pytest.raises(tokcodec.TokcError):
            with bounded(CASE_LIMIT_S, f"payload cut to {n} bytes"):
                codec.decode(pack(c))
