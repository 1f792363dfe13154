"""The .tkc container: pure bytes, no torch. spec/FORMAT.md is the normative description.

    magic "\\x89TKC" | major u8 | minor u8 | header_len varint | header body | payload | file CRC-32

Header body (version 1.0), in order:
    width varint, height varint          original image size in pixels (before padding)
    model_id 4 bytes                     first 4 bytes of SHA-256 over the weights' tensor bytes
    grid_log2 u8                         log2 of the token size in pixels (4: one token per 16x16)
    params u8                            low nibble log2(K), high nibble mask mode
    schedule_id u8, coder_id u8
    token_crc32 4 bytes (LE)             CRC-32 of the kept tokens as u16 LE in coding order
    n_ext varint, then n_ext x (tag varint, length varint, bytes)
        tag bit 0 set = critical (a reader that does not know the tag must refuse the file)
    mask_check u8 (version 1.2 on)       low byte of a CRC-32 over the grid size and keep mask
    decoder u8 (version 1.3 on)          the fidelity decoder the file was encoded against
Varints are unsigned LEB128 and must use the shortest form.
The payload is the range coder's 32-bit words, little-endian. The file CRC-32 (LE) covers
every byte before it.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import zlib
from dataclasses import dataclass, field

from .errors import FormatError

MAGIC = b"\x89TKC"
# 1.1 added extension 2 (tone and colour correction); 1.2 appends mask_check to the header;
# 1.3 appends decoder. tokc writes 1.3 files; it reads 1.0 to 1.2 files as before.
MAJOR, MINOR = 1, 3
WRITE_MINOR = 3
MAX_DIMENSION = 65535
DEFAULT_MAX_PIXELS = 64_000_000
MIN_FILE_BYTES = 26  # magic, version, the shortest header (1x1, no extension), file CRC; no payload
MODES = ("entire", "edge", "edge_more", "checkerboard")
KNOWN_EXTENSIONS: dict[int, str] = {2: "tone and colour correction",  # tag -> name (1.1)
                                    3: "display size"}  # critical; tokc 0.4 (section 12)
DISPLAY_TAG = 3
MAX_UPSCALE = 16  # a file's display size is at most this many times its coded size per side


def grid_size(width: int, height: int, token_size: int = 16) -> tuple[int, int]:
    """Token grid (rows, cols) of an image (section 1.4): padded to a multiple of two tokens."""
    unit = 2 * token_size
    return (-(-height // unit) * 2, -(-width // unit) * 2)


def put_varint(out: bytearray, value: int) -> None:
    if value < 0:
        raise ValueError("varint must be non-negative")
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


class Reader:
    def __init__(self, data: bytes, pos: int = 0, end: int | None = None):
        self.data, self.pos = data, pos
        self.end = len(data) if end is None else end

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > self.end:
            raise FormatError(f"header is cut short while reading {what}")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def varint(self, what: str) -> int:
        value, shift = 0, 0
        for i in range(10):
            b = self.u8(what)
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                if b == 0 and i > 0:
                    raise FormatError(f"{what}: varint is not in shortest form")
                if value >> 64:
                    raise FormatError(f"{what}: varint is over 2**64 - 1")
                return value
            shift += 7
        raise FormatError(f"{what}: varint is too long")


@dataclass
class Header:
    width: int
    height: int
    model_id: bytes
    codebook: int
    mode: str
    token_crc32: int
    grid_log2: int = 4
    schedule_id: int = 1
    coder_id: int = 1
    extensions: list[tuple[int, bytes]] = field(default_factory=list)
    minor: int = 0  # as read; tokc's encoder writes WRITE_MINOR (codec.encode_setting)
    mask_check: int | None = None  # minor >= 2: mask_check(grid, keep) of the file's keep mask
    decoder: int = 0  # minor >= 3: number of the fidelity decoder the file was encoded against

    @property
    def token_size(self) -> int:
        return 1 << self.grid_log2

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid (rows, cols): the image is padded to a multiple of two tokens."""
        return grid_size(self.width, self.height, self.token_size)


@dataclass
class Container:
    header: Header
    payload: bytes

    @property
    def overhead(self) -> int:
        return len(pack(self)) - len(self.payload)


def _body(h: Header) -> bytes:
    if h.codebook & (h.codebook - 1) or not 2 <= h.codebook <= 1 << 15:
        raise ValueError(f"codebook size {h.codebook} is not a power of two in [2, 32768]")
    if h.mode not in MODES:
        raise ValueError(f"unknown mode {h.mode!r}")
    if len(h.model_id) != 4:
        raise ValueError("model_id must be 4 bytes")
    b = bytearray()
    put_varint(b, h.width)
    put_varint(b, h.height)
    b += h.model_id
    b.append(h.grid_log2)
    b.append((MODES.index(h.mode) << 4) | (h.codebook.bit_length() - 1))
    b.append(h.schedule_id)
    b.append(h.coder_id)
    b += struct.pack("<I", h.token_crc32)
    put_varint(b, len(h.extensions))
    for tag, data in h.extensions:
        put_varint(b, tag)
        put_varint(b, len(data))
        b += data
    if h.minor >= 2:
        if h.mask_check is None or not 0 <= h.mask_check <= 255:
            raise ValueError("a 1.2 header needs mask_check (0..255)")
        b.append(h.mask_check)
    if h.minor >= 3:
        if not 0 <= h.decoder <= 255:
            raise ValueError("decoder must be 0..255")
        b.append(h.decoder)
    elif h.decoder:
        raise ValueError("a file naming a fidelity decoder needs minor >= 3")
    return bytes(b)


def pack(c: Container) -> bytes:
    body = _body(c.header)
    out = bytearray(MAGIC)
    out += bytes((MAJOR, c.header.minor))
    put_varint(out, len(body))
    out += body
    out += c.payload
    out += struct.pack("<I", zlib.crc32(out))
    return bytes(out)


def looks_like_tkc(prefix: bytes) -> bool:
    return prefix[:4] == MAGIC


def unpack(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Container:
    """Parse and validate a .tkc file. Raises FormatError with a one-line reason."""
    if len(data) == 0:
        raise FormatError("file is empty")
    if not looks_like_tkc(data):
        if data[:8] == b"\x89PNG\r\n\x1a\n" or data[:3] == b"\xff\xd8\xff":
            raise FormatError("this is an image, not a .tkc file (did you mean `tokc encode`?)")
        raise FormatError("not a .tkc file (bad magic bytes)")
    if len(data) < MIN_FILE_BYTES:
        raise FormatError("file is truncated")
    major, minor = data[4], data[5]
    if major != MAJOR:
        newer = "newer" if major > MAJOR else "older"
        raise FormatError(f"file format version {major}.{minor} is {newer} than this tokc supports "
                          f"({MAJOR}.x); use a matching tokc release")
    (crc,) = struct.unpack("<I", data[-4:])
    if zlib.crc32(data[:-4]) != crc:
        raise FormatError("file is truncated or damaged (file CRC-32 mismatch)")
    r = Reader(data, 6, len(data) - 4)
    hlen = r.varint("header length")
    start = r.pos
    if start + hlen > r.end:
        raise FormatError("header length points past the end of the file")
    hr = Reader(data, start, start + hlen)
    width = hr.varint("width")
    height = hr.varint("height")
    if not (1 <= width <= MAX_DIMENSION and 1 <= height <= MAX_DIMENSION):
        raise FormatError(f"image size {width}x{height} is outside 1..{MAX_DIMENSION}")
    if width * height > max_pixels:
        raise FormatError(f"image is {width}x{height} = {width * height} pixels, over the limit of "
                          f"{max_pixels}; raise it with --max-pixels if you trust this file")
    model_id = hr.take(4, "model id")
    grid_log2 = hr.u8("grid")
    if grid_log2 != 4:
        raise FormatError(f"token size 2^{grid_log2} px is not supported (only 16)")
    params = hr.u8("codebook/mode")
    mode_i, log_k = params >> 4, params & 0xF
    if mode_i >= len(MODES):
        raise FormatError(f"unknown mask mode {mode_i}")
    if log_k < 1:
        raise FormatError("invalid codebook size")
    schedule_id = hr.u8("schedule id")
    coder_id = hr.u8("coder id")
    (token_crc,) = struct.unpack("<I", hr.take(4, "token CRC"))
    n_ext = hr.varint("extension count")
    exts = []
    for _ in range(n_ext):
        tag = hr.varint("extension tag")
        ln = hr.varint("extension length")
        payload = hr.take(ln, "extension data")
        if tag & 1 and tag not in KNOWN_EXTENSIONS:
            raise FormatError(f"file uses critical extension {tag} that this tokc does not know; "
                              "upgrade tokc")
        if tag == DISPLAY_TAG:
            if any(t == DISPLAY_TAG for t, _ in exts):
                raise FormatError(f"file has more than one display size (extension {DISPLAY_TAG})")
            _check_display(width, height, payload, max_pixels)
        exts.append((tag, payload))
    check = hr.u8("mask check") if minor >= 2 else None
    decoder = hr.u8("decoder") if minor >= 3 else 0
    # Fields appended by a later minor version are skipped: hr.pos may be < start + hlen.
    if minor <= MINOR and hr.pos != start + hlen:
        raise FormatError(f"header has {start + hlen - hr.pos} bytes after its last field "
                          f"(not allowed in a {MAJOR}.{MINOR} file)")
    header = Header(width, height, model_id, 1 << log_k, MODES[mode_i], token_crc, grid_log2,
                    schedule_id, coder_id, exts, minor, check, decoder)
    payload = data[start + hlen:len(data) - 4]
    if len(payload) % 4:
        raise FormatError("payload is not a whole number of 32-bit words (file damaged)")
    check_payload_length(header, len(payload))
    return Container(header, payload)


def display_body(size: tuple[int, int]) -> bytes:
    """Body of extension 3: display width and height, varints."""
    b = bytearray()
    put_varint(b, size[0])
    put_varint(b, size[1])
    return bytes(b)


def display_size(h: Header) -> tuple[int, int] | None:
    """The size (width, height) extension 3 says to show the image at; None without one.
    Validated by unpack."""
    for tag, body in h.extensions:
        if tag == DISPLAY_TAG:
            return _display_fields(body)
    return None


def shown_size(h: Header) -> tuple[int, int]:
    """The size a decoder shows the file's image at: extension 3's, else the header's."""
    return display_size(h) or (h.width, h.height)


def _display_fields(body: bytes) -> tuple[int, int]:
    """Extension 3's two varints; the body must hold exactly them."""
    r = Reader(body)
    try:
        dw, dh = r.varint("display width"), r.varint("display height")
    except FormatError:
        raise FormatError(f"display size (extension {DISPLAY_TAG}) is damaged: its body is not two "
                          "numbers in shortest form") from None
    if r.pos != r.end:
        raise FormatError(f"display size (extension {DISPLAY_TAG}) is damaged: {r.end - r.pos} bytes after its fields")
    return dw, dh


def _check_display(width: int, height: int, body: bytes, max_pixels: int) -> None:
    """Extension 3 (section 12.1): exactly two varints, each side at least the coded size and at
    most MAX_UPSCALE times it, and the displayed image within the pixel limit."""
    dw, dh = _display_fields(body)
    if not (width <= dw <= min(MAX_UPSCALE * width, MAX_DIMENSION)
            and height <= dh <= min(MAX_UPSCALE * height, MAX_DIMENSION)):
        raise FormatError(f"display size {dw}x{dh} (extension {DISPLAY_TAG}) is not 1 to {MAX_UPSCALE} "
                          f"times the coded size {width}x{height} (and at most {MAX_DIMENSION} a side)")
    if dw * dh > max_pixels:
        raise FormatError(f"image is shown at {dw}x{dh} = {dw * dh} pixels, over the limit of "
                          f"{max_pixels}; raise it with --max-pixels if you trust this file")


def extension_bytes(tag: int, body: bytes) -> int:
    """Bytes an extension adds to a file that has none: its tag and length varints and body."""
    head = bytearray()
    put_varint(head, tag)
    put_varint(head, len(body))
    return len(head) + len(body)


def unpack_own(data: bytes) -> Container:
    """`unpack` of a file this process made (the encoder's files): no pixel limit."""
    return unpack(data, max_pixels=1 << 62)


def with_extension(data: bytes, tag: int, body: bytes | None, minor: int = 0) -> bytes:
    """A packed file with extension `tag` set to `body` (None: removed), appended after the
    others, and its minor raised to at least `minor`."""
    c = unpack_own(data)
    hd = c.header
    exts = [e for e in hd.extensions if e[0] != tag] + ([] if body is None else [(tag, body)])
    return pack(Container(dataclasses.replace(hd, extensions=exts, minor=max(hd.minor, minor)), c.payload))


def mask_check(keep) -> int:
    """Header field mask_check (1.2): the low byte of the CRC-32 of the grid's rows and columns
    (u16 LE each) followed by one byte per token in raster order, 1 kept, 0 dropped. A reader
    compares it with the keep mask it built (after the block map, before any token), so a file
    whose declared size does not match its payload fails before the prior runs. `keep`: a 2-D
    boolean numpy array."""
    gh, gw = keep.shape
    return zlib.crc32(struct.pack("<HH", gh, gw) + keep.astype("u1").tobytes()) & 0xFF


# ------------------------------------------------------------------ payload length (section 4.3)
RANGE_CODERS = (1, 2)      # coder ids whose payload is a 24-bit range-coder stream (section 4)


def min_kept_tokens(h: Header) -> int:
    """Tokens every file with this header keeps, whatever its block map says."""
    gh, gw = h.grid
    return gh * gw // {"entire": 1, "edge": 2, "checkerboard": 2, "edge_more": 4}[h.mode]


def token_floor_bits(k: int) -> float:
    """The fewest bits a token of a K-symbol table can cost: the table gives every other symbol
    at least 16 of the coder's 2**24 (counts sum to <= 2**20; 15 leaves a margin)."""
    return -math.log2(1 - 15 * (k - 1) / 2 ** 24)


BLOCK_FLOOR_BITS = -math.log2(1 - 16000 / 2 ** 24)  # a block-map bit: adaptive counts sum to <= 1024


def min_payload_bits(h: Header) -> float:
    """A lower bound on the information (bits, under the coder's 24-bit tables) that the payload
    of any valid file with this header carries: its kept tokens (at least those of the mode's
    base pattern) and, in the edge modes, its block map."""
    gh, gw = h.grid
    bits = min_kept_tokens(h) * token_floor_bits(h.codebook)
    if h.mode in ("edge", "edge_more"):
        bits += (gh // 2) * (gw // 2) * BLOCK_FLOOR_BITS
    return bits


def check_payload_length(h: Header, n_bytes: int) -> None:
    """Refuse a payload too short for the declared image, before any model runs. A valid
    range-coder stream of n words carries less than 32 n bits: the coder's range starts below
    2**64, each symbol multiplies it by at most its probability, it renormalises (times 2**32)
    at most n - 1 times, and it ends >= 2**32 (entropy.Decoder.capacity_bits)."""
    if h.coder_id not in RANGE_CODERS:
        return
    need = min_payload_bits(h)
    if need > 8 * n_bytes:
        least = 4 * (math.floor(need / 32) + 1)
        raise FormatError(f"payload is {n_bytes} bytes, too short for a {h.width}x{h.height} image "
                          f"at K={h.codebook}, mode {h.mode} (a valid one has at least {least} "
                          "bytes): file truncated or damaged")
