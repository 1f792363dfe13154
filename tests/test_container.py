import struct
import zlib

import pytest

from tokcodec import container
from tokcodec.container import Container, FormatError, Header, pack, put_varint, unpack


def sample(**kw) -> Container:
    h = dict(width=768, height=512, model_id=b"\x01\x02\x03\x04", codebook=1024, mode="edge",
             token_crc32=0xDEADBEEF)
    h.update(kw)
    return Container(Header(**h), b"\x11\x22\x33\x44" * 3)


def test_round_trip_preserves_every_field():
    c = sample(extensions=[(2, b"hello")])
    d = unpack(pack(c))
    assert d.header == c.header and d.payload == c.payload


def test_golden_bytes():
    # Layout from spec/FORMAT.md; a change here is a format change.
    body = "8006" "8004" "01020304" "04" "1a" "01" "01" "efbeadde" "00"
    head = "89544b43" "0100" "11" + body + "11223344" * 3
    data = pack(sample())
    assert data[:-4].hex() == head
    assert data[-4:] == struct.pack("<I", zlib.crc32(bytes.fromhex(head)))


def test_fixed_overhead_is_small():
    c = sample()
    assert c.overhead <= 40
    assert c.overhead == 28


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2 ** 20, 2 ** 35])
def test_varint_round_trip(value):
    b = bytearray()
    put_varint(b, value)
    assert container.Reader(bytes(b)).varint("x") == value


def test_varint_non_shortest_rejected():
    with pytest.raises(FormatError, match="shortest"):
        container.Reader(b"\x80\x00").varint("x")


def refresh_crc(data: bytes) -> bytes:
    return data[:-4] + struct.pack("<I", zlib.crc32(data[:-4]))


@pytest.mark.parametrize("data,message", [
    (b"", "empty"),
    (b"hello world, not a codec file", "not a .tkc"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "image, not a .tkc"),
    (b"\x89TKC\x01", "truncated"),
])
def test_foreign_inputs_rejected(data, message):
    with pytest.raises(FormatError, match=message):
        unpack(data)


def test_truncation_and_bit_flips_rejected():
    data = pack(sample())
    for n in range(len(data)):
        with pytest.raises(FormatError):
            unpack(data[:n])
    for i in range(len(data)):
        for bit in (0, 7):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            with pytest.raises(FormatError):
                unpack(bytes(bad))


def test_future_major_rejected_and_higher_minor_accepted():
    data = bytearray(pack(sample()))
    data[4] = 2
    with pytest.raises(FormatError, match="version 2.0 is newer"):
        unpack(refresh_crc(bytes(data)))
    data = bytearray(pack(sample()))
    data[5] = 7  # a 1.7 header holds 1.2's mask_check after the extensions, then fields of 1.3-1.7
    with pytest.raises(FormatError, match="mask check"):
        unpack(refresh_crc(bytes(data)))
    c = sample()
    c.header.minor, c.header.mask_check = 2, 0x5A
    two = pack(c)
    assert unpack(two).header.mask_check == 0x5A and len(two) == len(pack(sample())) + 1
    c.header.extensions = [(4, b"x")]
    body = pack(c)[7:-4 - len(c.payload)]  # header body (header_len is 1 byte here)
    data = bytearray(pack(c))
    data[5], data[6] = 7, len(body) + 3
    data[7 + len(body):7 + len(body)] = b"\x01\x02\x03"
    hd = unpack(refresh_crc(bytes(data))).header
    assert (hd.minor, hd.mask_check, hd.extensions) == (7, 0x5A, [(4, b"x")])


def test_unknown_critical_extension_rejected_ancillary_skipped():
    assert unpack(pack(sample(extensions=[(4, b"x")]))).header.extensions == [(4, b"x")]
    with pytest.raises(FormatError, match="critical extension 5"):
        unpack(pack(sample(extensions=[(5, b"x")])))


def test_size_limits_checked_before_allocation():
    big = Container(sample(width=60000, height=60000).header, b"\0" * 4096)
    with pytest.raises(FormatError, match="over the limit"):
        unpack(pack(big))
    assert unpack(pack(big), max_pixels=60000 ** 2).header.width == 60000


@pytest.mark.parametrize("mode", container.MODES)
@pytest.mark.parametrize("k", [2, 16, 1024, 32768])
def test_payload_too_short_for_the_grid_is_refused(mode, k):
    """A payload of n words carries < 32 n bits; every kept token and block bit costs at least
    its floor, so a huge grid with a tiny payload is refused without any model."""
    h = sample(width=8000, height=8000, mode=mode, codebook=k).header
    need = container.min_payload_bits(h)
    words = int(need // 32)  # the largest payload that is still too short
    with pytest.raises(FormatError, match="too short"):
        unpack(pack(Container(h, b"\0" * 4 * words)), max_pixels=8000 ** 2)
    assert unpack(pack(Container(h, b"\0" * 4 * (words + 1))), max_pixels=8000 ** 2).header.mode == mode


def test_empty_payload_is_refused_for_any_grid():
    for w, h in [(1, 1), (8000, 8000), (65535, 976)]:
        with pytest.raises(FormatError, match="too short"):
            unpack(pack(Container(sample(width=w, height=h, codebook=16, mode="entire").header, b"")),
                   max_pixels=64_000_000)


def test_floors_are_below_the_cheapest_symbol_a_table_allows():
    """The cheapest token: every other symbol at count 1 (the prior's tables sum to <= 2**20);
    the cheapest block bit: adaptive counts (1023, 1). Both coders give each other symbol at
    least 16 of 2**24."""
    import numpy as np

    from tokcodec.entropy import quantized_cdf
    for k in (2, 16, 1024, 32768):
        row = np.ones((1, k), dtype=np.int64)
        row[0, 0] = (1 << 20) - k + 1
        for coder in (1, 2):
            cdf = quantized_cdf(row, coder)[0]
            cheapest = -np.log2((cdf[1] - cdf[0]) / 2 ** 24)
            assert container.token_floor_bits(k) < cheapest
    for coder in (1, 2):
        cdf = quantized_cdf(np.array([[1023, 1]]), coder)[0]
        assert container.BLOCK_FLOOR_BITS < -np.log2((cdf[1] - cdf[0]) / 2 ** 24)


def test_grid_is_padded_to_two_tokens():
    assert sample(width=768, height=512).header.grid == (32, 48)
    assert sample(width=33, height=1).header.grid == (2, 4)
