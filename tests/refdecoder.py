"""A second .tkc decoder, written from spec/FORMAT.md alone, deliberately simple and slow.

It shares no code with tokcodec and uses no library whose behaviour the spec does not define:
the token path (container, range decoder, prior, generation) is pure Python integers; the
weights file is parsed by hand (safetensors layout, spec section 6); the pixel decoder
(section 8, not bit-exact by definition) uses numpy float64 array arithmetic only.
Section numbers below refer to spec/FORMAT.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from decimal import Decimal, getcontext
from math import isqrt
from pathlib import Path
from operator import mul

M32, M64, M128 = (1 << 32) - 1, (1 << 64) - 1, (1 << 128) - 1
MODES = ("entire", "edge", "edge_more", "checkerboard")


class Refuse(Exception):
    """The file is refused; `reason` is one of the codes of section 1.6."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


# ---------------------------------------------------------------------------- section 0: CRC-32

def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC = _crc_table()


def crc32(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


# ---------------------------------------------------------------------------- section 1: container

@dataclass
class Header:
    minor: int
    width: int
    height: int
    model_id: bytes
    grid_log2: int
    log2_k: int
    mode: str
    schedule_id: int
    coder_id: int
    token_crc32: int
    extensions: list
    payload: bytes
    overhead: int
    mask_check: int | None = None
    decoder: int = 0

    @property
    def k(self) -> int:
        return 1 << self.log2_k

    @property
    def grid(self) -> tuple[int, int]:
        return 2 * -(-self.height // 32), 2 * -(-self.width // 32)


class _Bytes:
    def __init__(self, data: bytes, pos: int, end: int):
        self.data, self.pos, self.end = data, pos, end

    def take(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise Refuse("header", "field runs past the end of the header")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def varint(self) -> int:
        value = 0
        for i in range(10):
            b = self.take(1)[0]
            value |= (b & 0x7F) << (7 * i)
            if not b & 0x80:
                if i and b == 0:
                    raise Refuse("header", "varint not in shortest form")
                if value > M64:
                    raise Refuse("header", "varint over 2^64-1")
                return value
        raise Refuse("header", "varint longer than 10 bytes")


def parse(data: bytes, max_pixels: int = 64_000_000) -> Header:
    """Every check of section 1 (those that need no model), in the order of section 1.5."""
    if data[:4] != b"\x89TKC":
        raise Refuse("magic")
    if len(data) < 26:
        raise Refuse("truncated")
    if data[4] != 1:
        raise Refuse("version")
    if crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
        raise Refuse("file_crc")
    r = _Bytes(data, 6, len(data) - 4)
    hlen = r.varint()
    start = r.pos
    if start + hlen > len(data) - 4:
        raise Refuse("header", "header_len past the end")
    h = _Bytes(data, start, start + hlen)
    width, height = h.varint(), h.varint()
    if not (1 <= width <= 65535 and 1 <= height <= 65535) or width * height > max_pixels:
        raise Refuse("dimensions")
    model_id = h.take(4)
    grid_log2, params, schedule_id, coder_id = h.take(4)
    if grid_log2 != 4:
        raise Refuse("grid")
    if params >> 4 > 3:
        raise Refuse("mode")
    if params & 15 == 0:
        raise Refuse("codebook")
    token_crc = struct.unpack("<I", h.take(4))[0]
    exts = []
    for _ in range(h.varint()):
        tag = h.varint()
        body = h.take(h.varint())
        if tag & 1 and tag != 3:  # tag 3 (section 12) is the one critical tag defined
            raise Refuse("extension")
        if tag == 3:
            if any(t == 3 for t, _ in exts):
                raise Refuse("extension", "a second display size")
            dw, dh = display_body(body)
            if not (width <= dw <= min(16 * width, 65535) and height <= dh <= min(16 * height, 65535)):
                raise Refuse("extension", "display size out of range")
            if dw * dh > max_pixels:
                raise Refuse("dimensions", "display size over the pixel limit")
        exts.append((tag, body))
    check = h.take(1)[0] if data[5] >= 2 else None
    decoder = h.take(1)[0] if data[5] >= 3 else 0
    if data[5] <= 3 and h.pos != start + hlen:
        raise Refuse("header", "bytes after the last field of a 1.0 to 1.3 header")
    payload = data[start + hlen:-4]
    if len(payload) % 4:
        raise Refuse("payload_length")
    return Header(data[5], width, height, model_id, grid_log2, params & 15, MODES[params >> 4],
                  schedule_id, coder_id, token_crc, exts, payload, len(data) - len(payload), check, decoder)


def display_body(body: bytes) -> tuple[int, int]:
    """Section 12.1: two shortest-form varints and nothing else."""
    out, pos = [], 0
    for _ in range(2):
        value = 0
        for i in range(11):
            if pos >= len(body) or i == 10:
                raise Refuse("extension", "display size varint")
            b = body[pos]
            pos += 1
            value |= (b & 0x7F) << (7 * i)
            if not b & 0x80:
                if i and b == 0:
                    raise Refuse("extension", "varint not in shortest form")
                break
        out.append(value)
    if pos != len(body):
        raise Refuse("extension", "bytes after the display size")
    return out[0], out[1]


def display(hd: Header) -> tuple[int, int] | None:
    """The display size of extension 3, if the file has one."""
    for tag, body in hd.extensions:
        if tag == 3:
            return display_body(body)
    return None


def upsample(rgb, width: int, height: int):
    """Section 12.2 in float64: uint8 (h, w, 3) -> uint8 (height, width, 3)."""
    import numpy as np

    def k(t):
        t = abs(t)
        return 1.5 * t ** 3 - 2.5 * t ** 2 + 1 if t <= 1 else (-0.5 * t ** 3 + 2.5 * t ** 2 - 4 * t + 2 if t < 2 else 0.0)

    def axis(v, n_out):  # resample axis 0 of v
        n = v.shape[0]
        out = np.zeros((n_out,) + v.shape[1:])
        for x in range(n_out):
            c = (x + 0.5) * n / n_out - 0.5
            f = math.floor(c)
            for i in range(f - 1, f + 3):
                out[x] += k(c - i) * v[min(max(i, 0), n - 1)]
        return out

    y = axis(np.asarray(rgb, dtype=np.float64), height)
    y = axis(y.transpose(1, 0, 2), width).transpose(1, 0, 2)
    return np.clip(np.floor(y + 0.5), 0, 255).astype(np.uint8)


def check_ids(hd: Header) -> None:
    if hd.schedule_id != 1:
        raise Refuse("schedule")
    if hd.coder_id not in (1, 2):
        raise Refuse("coder")


# ---------------------------------------------------------------------------- sections 2, 3

def uigc_stage(i: int, j: int) -> int:
    return {(0, 0): 0, (1, 1): 1, (1, 0): 2, (0, 1): 3}[(i % 2, j % 2)]


def stages(h: int, w: int) -> list[list[int]]:
    """Schedule 1: flat positions of each stage, in raster order."""
    s = 2
    while -(-h // s) * -(-w // s) > 64:
        s *= 2
    out = [[i * w + j for i in range(h) for j in range(w) if i % s == 0 and j % s == 0]]
    while s >= 2:
        t = s // 2
        for a, b in ((t, t), (t, 0), (0, t)):
            out.append([i * w + j for i in range(h) for j in range(w) if (i % s, j % s) == (a, b)])
        s = t
    return out


# ---------------------------------------------------------------------------- section 4

def _rn(p: int, q: int) -> tuple[int, int]:
    """The binary64 value nearest to p/q > 0 (ties to even), as (m, e) with value m * 2^e,
    2^52 <= m < 2^53 (appendix A)."""
    e = p.bit_length() - q.bit_length() - 53
    while True:
        num, den = (p, q << e) if e >= 0 else (p << -e, q)
        if num < den << 52:
            e -= 1
        elif num >= den << 53:
            e += 1
        else:
            break
    m, rem = divmod(num, den)
    if 2 * rem > den or (2 * rem == den and m & 1):
        m += 1
    if m == 1 << 53:
        m, e = 1 << 52, e + 1
    return m, e


def cdf(counts: list[int], coder_id: int) -> list[int]:
    """Section 4.1: the 24-bit cumulative table of a count row."""
    k, total = len(counts), sum(counts)
    free = (1 << 24) - k
    out, s = [], 0
    scale = _rn(free, total) if coder_id == 1 else None
    for i, c in enumerate(counts):
        if coder_id == 2:
            left = s * free // total
        elif s == 0:
            left = 0
        else:  # trunc(RN(s * scale))
            m, e = _rn(s * scale[0] << max(scale[1], 0), 1 << max(-scale[1], 0))
            left = m << e if e >= 0 else m >> -e
        out.append(left + i)
        s += c
    out.append(1 << 24)
    return out


class RangeDecoder:
    """Section 4.2."""

    def __init__(self, payload: bytes):
        self.words = [struct.unpack_from("<I", payload, 4 * i)[0] for i in range(len(payload) // 4)]
        self.lower, self.range, self.renorms, self.symbols = 0, M64, 0, 0
        self.point = (self.word(0) << 32) | self.word(1)

    def word(self, i: int) -> int:
        return self.words[i] if i < len(self.words) else 0

    def decode(self, table: list[int]) -> int:
        scale = self.range >> 24
        q = ((self.point - self.lower) & M64) // scale
        if q >= 1 << 24:
            raise Refuse("payload", "quantile out of range")
        s = 0
        while table[s + 1] <= q:
            s += 1
        self.lower = (self.lower + scale * table[s]) & M64
        self.range = scale * (table[s + 1] - table[s])
        if self.range < 1 << 32:
            self.lower = (self.lower << 32) & M64
            self.range <<= 32
            self.renorms += 1
            self.point = ((self.point << 32) & M64) | self.word(self.renorms + 1)
        if self.renorms >= len(self.words):  # a second word past the end: finish() must fail
            raise Refuse("payload", "reads past the end")
        self.symbols += 1
        return s

    def finish(self) -> None:
        """Section 4.3: the payload ends exactly where the encoder's words end."""
        n = len(self.words)
        if not self.symbols:
            if n:
                raise Refuse("payload", "words but no symbol")
            return
        point_word = ((self.lower + (1 << 32) - 1) & M64) >> 32
        upper_word = ((self.lower + self.range) & M64) >> 32
        if n != self.renorms + 1 + (upper_word == point_word) or self.point != point_word << 32:
            raise Refuse("payload", "does not end where the coder's words end")


def encode(symbols: list[tuple[int, int]]) -> list[int]:
    """Section 4.5: the encoder's words for symbols given as (cdf[s], cdf[s+1]) pairs."""
    out: list[int] = []
    lower, rng = 0, M64

    def add(value):  # lower + value, the carry going into the words already written
        nonlocal lower
        lower += value
        if lower > M64:
            lower &= M64
            i = len(out) - 1
            while True:
                out[i] = (out[i] + 1) & M32
                if out[i]:
                    break
                i -= 1

    for left, right in symbols:
        scale = rng >> 24
        add(scale * left)
        rng = scale * (right - left)
        if rng < 1 << 32:
            out.append(lower >> 32)
            lower, rng = (lower << 32) & M64, rng << 32
    if symbols:
        upper_word = ((lower + rng) & M64) >> 32
        add((1 << 32) - 1)
        out.append(lower >> 32)
        if upper_word == lower >> 32:
            out.append(0)
    return out


# ---------------------------------------------------------------------------- section 6: weights

_DTYPES = {"F16": ("torch.float16", "<e", 2), "BF16": ("torch.bfloat16", None, 2),
           "F32": ("torch.float32", "<f", 4), "F64": ("torch.float64", "<d", 8),
           "I8": ("torch.int8", "<b", 1), "I16": ("torch.int16", "<h", 2), "I32": ("torch.int32", "<i", 4),
           "I64": ("torch.int64", "<q", 8), "U8": ("torch.uint8", "<B", 1), "BOOL": ("torch.bool", "<?", 1)}


class Weights:
    """A safetensors file: u64 LE header length, JSON header, raw little-endian tensor data."""

    def __init__(self, path):
        raw = open(path, "rb").read()
        (n,) = struct.unpack_from("<Q", raw, 0)
        head = json.loads(raw[8:8 + n])
        self.metadata = head.pop("__metadata__", {})
        self.raw = {name: (d["dtype"], tuple(d["shape"]), raw[8 + n + d["data_offsets"][0]:8 + n + d["data_offsets"][1]])
                    for name, d in head.items()}

    def values(self, name: str) -> list:
        """Flat list of a tensor's values (Python ints or floats), C order."""
        dtype, shape, data = self.raw[name]
        fmt, size = _DTYPES[dtype][1], _DTYPES[dtype][2]
        return [v for (v,) in struct.iter_unpack(fmt, data)] if data else []

    def matrix(self, name: str) -> list[list]:
        _, shape, _ = self.raw[name]
        v = self.values(name)
        return [v[i * shape[1]:(i + 1) * shape[1]] for i in range(shape[0])]

    def model_id(self, names) -> bytes:
        h = hashlib.sha256()
        for name in sorted(names, key=lambda s: s.encode("utf-8")):
            dtype, shape, data = self.raw[name]
            dims = ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "")
            h.update(f"{name}|{_DTYPES[dtype][0]}|({dims})|".encode("utf-8"))
            h.update(data)
        return h.digest()[:4]

    def ids(self) -> tuple[bytes, bytes]:
        """(bitstream id, legacy whole-file id)."""
        bit = [n for n in self.raw if n.startswith("prior.") or n.startswith("tok.codebook_")]
        return self.model_id(bit), self.model_id(list(self.raw))


# ---------------------------------------------------------------------------- section 5: the prior

def _exp_table() -> list[int]:
    getcontext().prec = 50
    return [int((Decimal(65536) * (Decimal(-i) / 256).exp()).to_integral_value()) for i in range(4097)]


EXP = _exp_table()


class Prior:
    def __init__(self, w: Weights):
        cfg = json.loads(w.metadata["prior_config"])
        self.D, self.L, self.H, self.W = cfg["dim"], cfg["depth"], cfg["heads"], cfg["window"]
        self.codebooks = tuple(cfg["codebooks"])
        self.w = w
        self._lin: dict = {}

    def emb(self, k: int) -> list[list[int]]:
        return self.w.matrix(f"prior.emb.{k}")

    def linear_params(self, name: str):
        if name not in self._lin:
            w = self.w.matrix(f"prior.{name}.w")  # in x out
            cols = [list(c) for c in zip(*w)]    # out x in
            self._lin[name] = (cols, self.w.values(f"prior.{name}.m"), self.w.values(f"prior.{name}.b"))
        return self._lin[name]

    def linear(self, x: list[int], name: str) -> list[int]:
        cols, m, b = self.linear_params(name)
        return [((sum(map(mul, x, c)) * mo + (1 << 29)) >> 30) + bo for c, mo, bo in zip(cols, m, b)]

    def layernorm(self, x: list[int], name: str) -> list[int]:
        c = len(x)
        mean = sum(x) // c
        d = [v - mean for v in x]
        var = sum(v * v for v in d) // c
        std = max(1, isqrt(var + 1))
        g, b = self.w.values(f"prior.{name}.g"), self.w.values(f"prior.{name}.b")
        return [((((v << 8) // std) * gg + (1 << 11)) >> 12) + bb for v, gg, bb in zip(d, g, b)]

    def features(self, grid: list[int], h: int, w: int, k: int) -> list[list[int]]:
        """Section 5: the final normalised features of every position (ids in 0..K)."""
        D, H, W = self.D, self.H, self.W
        dh = D // H
        emb = self.emb(k)
        x = [list(emb[t]) for t in grid]
        for blk in range(self.L):
            r = (blk % 2) * (W // 2)
            rel = self.w.matrix(f"prior.b{blk}.rel")
            qkv = [self.linear(self.layernorm(v, f"b{blk}.ln1"), f"b{blk}.qkv") for v in x]
            # windows over the grid placed at offset (r, r) in a zero grid of whole windows
            windows: dict = {}
            for p in range(h * w):
                y, z = p // w + r, p % w + r
                windows.setdefault((y // W, z // W), []).append((p, y % W, z % W))
            o = [None] * (h * w)
            for members in windows.values():
                for p, qy, qx in members:
                    q = qkv[p]
                    out = []
                    for head in range(H):
                        a = head * dh
                        qh = q[a:a + dh]
                        s = []
                        for kp, ky, kx in members:
                            idx = (qy - ky + W - 1) * (2 * W - 1) + (qx - kx + W - 1)
                            s.append(((sum(map(mul, qh, qkv[kp][D + a:D + a + dh])) + 128) >> 8) + rel[head][idx])
                        mx = max(s)
                        e = [EXP[min(mx - v, 4096)] for v in s]
                        tot = sum(e)
                        for c in range(dh):
                            num = sum(ei * qkv[kp][2 * D + a + c] for ei, (kp, _, _) in zip(e, members))
                            out.append((2 * num + tot) // (2 * tot))
                    o[p] = out
            x = [[a + b for a, b in zip(v, self.linear(ov, f"b{blk}.proj"))] for v, ov in zip(x, o)]
            x = [[a + b for a, b in zip(v, self.linear([max(0, t) for t in self.linear(
                self.layernorm(v, f"b{blk}.ln2"), f"b{blk}.fc1")], f"b{blk}.fc2"))] for v in x]
        return [self.layernorm(v, "ln_out") for v in x]

    def logits(self, feats: list[int], k: int) -> list[int]:
        return self.linear(feats, f"head.{k}")


def static_bounds(w: Weights) -> dict[str, int]:
    """Section 5.3: bounds on the magnitude of the prior's intermediates over every input grid."""
    cfg = json.loads(w.metadata["prior_config"])
    D, L, H, W = cfg["dim"], cfg["depth"], cfg["heads"], cfg["window"]
    dh = D // H
    worst: dict[str, int] = {}

    def note(name, v):
        worst[name] = max(worst.get(name, 0), v)

    def ln(X, name):
        note("layernorm_sum_of_squares", D * (2 * max(X)) ** 2)
        y = 256 * isqrt(3 * D) + 256
        g, b = w.values(f"prior.{name}.g"), w.values(f"prior.{name}.b")
        note("layernorm_product", y * max(abs(v) for v in g))
        return [(y * abs(gg) + 2048) // 4096 + abs(bb) + 1 for gg, bb in zip(g, b)]

    def lin(X, name):
        cols = [list(c) for c in zip(*w.matrix(f"prior.{name}.w"))]
        acc = [sum(x * abs(v) for x, v in zip(X, c)) for c in cols]
        m, b = w.values(f"prior.{name}.m"), w.values(f"prior.{name}.b")
        note("matrix_product_sum", max(acc))
        note("scaled_product", max(a * abs(mm) for a, mm in zip(acc, m)))
        return [(a * abs(mm) + (1 << 29)) // (1 << 30) + abs(bb) + 1 for a, mm, bb in zip(acc, m, b)]

    for k in cfg["codebooks"]:
        X = [max(abs(v) for v in col) for col in zip(*w.matrix(f"prior.emb.{k}"))]
        for i in range(L):
            a = lin(ln(X, f"b{i}.ln1"), f"b{i}.qkv")
            q, kk, v = a[:D], a[D:2 * D], a[2 * D:]
            rel = max(abs(x) for x in w.values(f"prior.b{i}.rel"))
            qk = max(sum(q[h * dh + c] * kk[h * dh + c] for c in range(dh)) for h in range(H))
            note("matrix_product_sum", qk)
            note("attention_sum", W * W * 65536 * max(v))
            note("score", qk // 256 + 1 + rel)
            X = [x + y for x, y in zip(X, lin([t + 1 for t in v], f"b{i}.proj"))]
            X = [x + y for x, y in zip(X, lin(lin(ln(X, f"b{i}.ln2"), f"b{i}.fc1"), f"b{i}.fc2"))]
            note("residual", max(X))
        note("logit", max(lin(ln(X, "ln_out"), f"head.{k}")))
    return worst


def counts(logits: list[int], t: int = 1000) -> list[int]:
    """Sections 5 and 7: count table of a logit row at temperature t/1000 (t >= 1)."""
    if t != 1000:
        logits = [v * 1000 // t for v in logits]
    k, m = len(logits), max(logits)
    wgt = [EXP[min(m - v, 4096)] for v in logits]
    total = sum(wgt)
    return [v * ((1 << 20) - k) // total + 1 for v in wgt]


# ---------------------------------------------------------------------------- decoding

@dataclass
class Decoded:
    header: Header
    tokens: list[int]   # flat, K at dropped positions
    keep: list[bool]


class Model:
    def __init__(self, path):
        self.weights = Weights(path)
        self.prior = Prior(self.weights)
        self.ids = self.weights.ids()
        # section 6: a prior.safetensors beside the base file adds a prior under its own id
        # (its prior tensors with the base file's codebooks); each id names its prior
        self.priors = {i: self.prior for i in self.ids}
        pri = Path(path).parent / "prior.safetensors" if Path(path).is_file() else Path(path) / "prior.safetensors"
        if pri.is_file():
            extra = Weights(pri)
            if extra.metadata["model_id"] != self.ids[0].hex():
                raise Refuse("model", "prior file made for another base file")
            extra.raw.update({n: v for n, v in self.weights.raw.items() if n.startswith("tok.codebook_")})
            new_id = extra.ids()[0]
            self.priors[new_id] = Prior(extra)
            self.ids = (*self.ids, new_id)
        # fidelity decoders (section 8.4): 0 is the base file's; a fidelity.safetensors beside
        # it adds the one its metadata numbers
        self.fidelity: dict[int, Weights] = {}  # decoder n >= 1: its weights (tensors fid.<name>)
        fid = Path(path).parent / "fidelity.safetensors" if Path(path).is_file() else Path(path) / "fidelity.safetensors"
        if fid.is_file():
            extra = Weights(fid)
            self.fidelity[int(extra.metadata["number"])] = extra
        self.decoders = {0, *self.fidelity}


def keep_mask(hd: Header, dec: RangeDecoder) -> list[bool]:
    """Section 2 and 4.4 (block map)."""
    h, w = hd.grid
    if hd.mode == "entire":
        return check_mask(hd, [True] * (h * w))
    blocks = [[0] * (w // 2) for _ in range(h // 2)]
    if hd.mode in ("edge", "edge_more"):
        n = [[1, 1] for _ in range(4)]
        for bi in range(h // 2):
            for bj in range(w // 2):
                c = 2 * (blocks[bi - 1][bj] if bi else 0) + (blocks[bi][bj - 1] if bj else 0)
                bit = dec.decode(cdf(n[c], hd.coder_id))
                blocks[bi][bj] = bit
                n[c][bit] += 2
                if sum(n[c]) > 1024:
                    n[c] = [(v + 1) // 2 for v in n[c]]
    base = (0,) if hd.mode == "edge_more" else (0, 1)
    keep = [uigc_stage(i, j) in base or bool(blocks[i // 2][j // 2]) for i in range(h) for j in range(w)]
    return check_mask(hd, keep)


def check_mask(hd: Header, keep: list[bool]) -> list[bool]:
    """Section 1.2, mask_check (files of minor 2 and later)."""
    if hd.minor >= 2:
        h, w = hd.grid
        data = struct.pack("<HH", h, w) + bytes(int(k) for k in keep)
        if crc32(data) & 0xFF != hd.mask_check:
            raise Refuse("mask_check")
    return keep


def describe(data: bytes) -> Header:
    """What a reader without the model checks (section 1.7): the container, the correction
    (section 11) and the block map."""
    hd = parse(data)
    check_ids(hd)
    correction_of(hd)
    keep_mask(hd, RangeDecoder(hd.payload))
    return hd


def decode(data: bytes, model: Model) -> Decoded:
    hd = parse(data)
    if hd.model_id not in model.ids:
        raise Refuse("model")
    check_ids(hd)
    prior = model.priors[hd.model_id]
    if hd.k not in prior.codebooks:
        raise Refuse("codebook", "K not in the model")
    if hd.decoder not in model.decoders:
        raise Refuse("decoder", "the file's fidelity decoder is not among the model's")
    correction_of(hd)
    dec = RangeDecoder(hd.payload)
    keep = keep_mask(hd, dec)
    h, w = hd.grid
    k = hd.k
    grid = [k] * (h * w)
    coded = []
    for pos in stages(h, w):
        kept = [p for p in pos if keep[p]]
        if not kept:
            continue
        ctx = list(grid)  # kept tokens of earlier stages, [MASK] elsewhere
        feats = prior.features(ctx, h, w, k)
        for p in kept:
            grid[p] = dec.decode(cdf(counts(prior.logits(feats[p], k)), hd.coder_id))
            coded.append(grid[p])
    dec.finish()
    if crc32(b"".join(struct.pack("<H", t) for t in coded)) != hd.token_crc32:
        raise Refuse("token_crc")
    return Decoded(hd, grid, keep)


# ---------------------------------------------------------------------------- section 7

def splitmix64(seed: int, p: int) -> int:
    z = (seed + (p + 1) * 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


class LegacyPCG64:
    """Section 7.3 (coder 1)."""

    def __init__(self, seed: int):
        entropy = []
        while True:
            entropy.append(seed & M32)
            seed >>= 32
            if not seed:
                break
        const = [0x43B0D7E5]

        def hashmix(v):
            v = (v ^ const[0]) & M32
            const[0] = (const[0] * 0x931E8875) & M32
            v = (v * const[0]) & M32
            return v ^ (v >> 16)

        def mix(x, y):
            v = (0xCA01F9DD * x - 0x4973F715 * y) & M32
            return v ^ (v >> 16)

        pool = [hashmix(entropy[i] if i < len(entropy) else 0) for i in range(4)]
        for a in range(4):
            for b in range(4):
                if a != b:
                    pool[b] = mix(pool[b], hashmix(pool[a]))
        for a in range(4, len(entropy)):
            for b in range(4):
                pool[b] = mix(pool[b], hashmix(entropy[a]))
        words, c = [], 0x8B51F9DD
        for i in range(8):
            v = pool[i % 4] ^ c
            c = (c * 0x58F38DED) & M32
            v = (v * c) & M32
            words.append(v ^ (v >> 16))
        s = [words[2 * i] | words[2 * i + 1] << 32 for i in range(4)]
        self.mult = 0x2360ED051FC65DA44385DF649FCCF645
        self.inc = ((((s[2] << 64) | s[3]) << 1) | 1) & M128
        self.state = ((self.inc + ((s[0] << 64) | s[1])) * self.mult + self.inc) & M128
        self.spare = None

    def next32(self) -> int:
        if self.spare is not None:
            v, self.spare = self.spare, None
            return v
        self.state = (self.state * self.mult + self.inc) & M128
        x = ((self.state >> 64) ^ self.state) & M64
        rot = self.state >> 122
        v = ((x >> rot) | (x << (64 - rot))) & M64
        self.spare = v >> 32
        return v & M32

    def below(self, total: int) -> int:
        m = self.next32() * total
        if m & M32 < total:
            threshold = ((1 << 32) - total) % total
            while m & M32 < threshold:
                m = self.next32() * total
        return m >> 32


def generate(d: Decoded, model: Model, seed: int, t: int) -> list[int]:
    """Section 7: every token, the dropped ones generated at temperature t/1000."""
    hd = d.header
    h, w = hd.grid
    k = hd.k
    grid = list(d.tokens)
    legacy = LegacyPCG64(seed) if hd.coder_id == 1 else None
    prior = model.priors[hd.model_id]
    done = [False] * (h * w)  # positions of earlier stages
    for pos in stages(h, w):
        drop = [p for p in pos if not d.keep[p]]
        if drop:  # context: every token of earlier stages, [MASK] elsewhere
            feats = prior.features([g if f else k for g, f in zip(grid, done)], h, w, k)
        for p in pos:
            done[p] = True
        for p in drop:
            logits = prior.logits(feats[p], k)
            if t == 0:
                grid[p] = logits.index(max(logits))
                continue
            c = counts(logits, t)
            total = sum(c)
            u = legacy.below(total) if legacy else (splitmix64(seed, p) * total) >> 64
            acc = 0
            for i, v in enumerate(c):
                acc += v
                if acc > u:
                    grid[p] = i
                    break
    return grid


# ---------------------------------------------------------------------------- section 8: pixels

def render(tokens: list[int], h: int, w: int, k: int, model: Model, width: int, height: int,
           realism: float = 0.0, decoder: Weights | None = None, noise=None, fidelity: int = 0):
    """Section 8 in float64: RGB uint8 array (height, width, 3). `fidelity`: the file's
    fidelity decoder (8.4; n >= 1 from the model's fidelity.safetensors). With a realism decoder
    file (`decoder`, section 8.3) and r > 0, `noise(H, W)` supplies each block's N(0, 1) map."""
    import numpy as np

    wt = model.weights
    cfg = json.loads(wt.metadata["tokenizer_config"])
    user_r = realism if decoder is not None else 0.0

    def arr(weights, name):
        return np.array(weights.values(name), dtype=np.float64).reshape(weights.raw[name][1])

    def pixels(r):  # the decoder of 8.2, with decoder realism r (8.3) when r > 0
        def t(name):
            if r == 0 and fidelity:  # 8.4: y0 is decoder n's; the realism decoder extends decoder 0
                return arr(model.fidelity[fidelity], f"fid.{name}")
            v = arr(wt, f"tok.decoder.{name}")
            return v + r * arr(decoder, "dec.delta." + name.replace(".", "__")) if r > 0 else v

        if r > 0:
            f = np.array([r] + [np.sin(np.pi * i * r) for i in range(1, 5)] + [np.cos(np.pi * i * r) for i in range(1, 5)])
            silu0 = (lambda v: v / (1 + np.exp(-v)))
            e = silu0(arr(decoder, "dec.realism.mlp.0.weight") @ f + arr(decoder, "dec.realism.mlp.0.bias"))
            e = silu0(arr(decoder, "dec.realism.mlp.2.weight") @ e + arr(decoder, "dec.realism.mlp.2.bias"))

        def conv(name, x):
            wgt, b = t(f"{name}.weight"), t(f"{name}.bias")
            c, hh, ww = x.shape
            xp = np.pad(x, ((0, 0), (1, 1), (1, 1)))
            cols = np.stack([xp[:, a:a + hh, b2:b2 + ww] for a in range(3) for b2 in range(3)], 1)  # c,9,h,w
            return np.einsum("ocn,cnhw->ohw", wgt.reshape(wgt.shape[0], c, 9), cols) + b[:, None, None]

        def silu(x):
            return x / (1 + np.exp(-x))

        def shuffle(x, r):
            c, hh, ww = x.shape
            return x.reshape(c // (r * r), r, r, hh, ww).transpose(0, 3, 1, 4, 2).reshape(c // (r * r), hh * r, ww * r)

        def block(name, x):
            hid = conv(f"{name}.conv1", silu(x))
            if r > 0:
                c = hid.shape[0]
                gs = r * (arr(decoder, f"dec.{name}.film.weight") @ e + arr(decoder, f"dec.{name}.film.bias"))
                hid = hid * (1 + gs[:c, None, None]) + gs[c:, None, None]
                hid = hid + r * arr(decoder, f"dec.{name}.noise_scale")[:, None, None] * noise(*hid.shape[1:])
            return x + conv(f"{name}.conv2", silu(hid))

        cb = np.array(wt.values(f"tok.codebook_{k}"), dtype=np.float64).reshape(k, -1)
        x = cb[np.array(tokens)].reshape(h, w, -1).transpose(2, 0, 1)
        x = conv("inp", x)
        b1, b2, b3 = cfg["dec_blocks"]  # blocks at H/4, H/8, H/16
        for i in range(b3):
            x = block(f"s3.{i}", x)
        x = shuffle(conv("up2.0", x), 2)
        for i in range(b2):
            x = block(f"s2.{i}", x)
        x = shuffle(conv("up1.0", x), 2)
        for i in range(b1):
            x = block(f"s1.{i}", x)
        return np.clip((shuffle(conv("out.0", silu(x)), 4) + 1) / 2, 0, 1)

    y = pixels(0.0)
    if user_r > 0:  # 8.3: fidelity below the cut-off, decoder realism rd above it
        rd = min(1.0, user_r / 0.6)
        sigma = 1.0 if user_r <= 0.6 else 1 + 2 * (user_r - 0.6) / 0.4
        n = math.ceil(3 * sigma)
        taps = np.array([math.exp(-i * i / (2 * sigma * sigma)) for i in range(-n, n + 1)])
        taps /= taps.sum()
        d = pixels(rd) - y
        dp = np.pad(d, ((0, 0), (0, 0), (n, n)), mode="edge")
        g = sum(taps[i] * dp[:, :, i:i + d.shape[2]] for i in range(2 * n + 1))
        gp = np.pad(g, ((0, 0), (n, n), (0, 0)), mode="edge")
        g = sum(taps[i] * gp[:, i:i + d.shape[1], :] for i in range(2 * n + 1))
        y = np.clip(y + d - g, 0, 1)
    rgb = np.floor(np.clip(y * 255 + 0.5, 0, 255)).astype(np.uint8).transpose(1, 2, 0)
    return rgb[:height, :width]


# ------------------------------------------------------------------ section 11 (extension 2)
def correction_of(hd: Header) -> tuple | None:
    """The file's tone and colour correction, parsed (`correction`), or None: extension 2 counts
    from minor 1 on, at most once."""
    if hd.minor < 1:
        return None
    bodies = [body for tag, body in hd.extensions if tag == 2]
    if len(bodies) > 1:
        raise Refuse("extension", "two tone and colour corrections")
    return correction(bodies[0], hd.width, hd.height) if bodies else None


def apply_correction(rgb, corr: tuple):
    """Section 11.3 in float64: the corrected uint8 pixels (height, width, 3)."""
    import numpy as np
    cell, grey, (step_y, step_c), values = corr
    height, width = rgb.shape[:2]
    out = rgb.astype(np.float64)
    if cell:
        def weights(n: int, g: int):  # bilinear, cell centres aligned, edges clamped
            m = np.zeros((n, g))
            for y in range(n):
                t = max(0.0, (y + 0.5) * g / n - 0.5)
                i0 = int(math.floor(t))
                m[y, i0] += 1 - (t - i0)
                m[y, min(i0 + 1, g - 1)] += t - i0
            return m
        gh, gw = len(values[0]), len(values[0][0])
        ay, ax = weights(height, gh), weights(width, gw)
        up = [ay @ (np.array(v, dtype=np.float64) * step) @ ax.T
              for v, step in zip(values, (step_y, step_c, step_c))]
        y, cb, cr = up if not grey else (up[0], 0.0, 0.0)
        out += np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], -1)
    if grey:
        out = np.repeat((0.299 * out[..., 0] + 0.587 * out[..., 1] + 0.114 * out[..., 2])[..., None], 3, -1)
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def correction(body: bytes, width: int, height: int) -> tuple:
    """Section 11.1-11.3: (cell, grey, (step_y, step_c), values[channel][row][col])."""
    if len(body) < 2:
        raise Refuse("extension", "shorter than 2 bytes")
    cell, flags = body[0], body[1]
    grey = flags & 1
    if flags >> 4:
        raise Refuse("extension", "unknown flags")
    if cell == 0:
        if len(body) != 2 or flags & 14:
            raise Refuse("extension", "bytes or flags after an empty grid")
        return 0, grey, (0, 0), []
    n = 1 if grey else 3
    if len(body) < 4 + n or (len(body) - 4 - n) % 4:
        raise Refuse("extension", "length")
    steps = (body[2], body[3])
    decays = list(body[4:4 + n])
    if 0 in steps or 0 in decays:
        raise Refuse("extension", "zero step or decay")
    f = 16 * cell
    gh, gw = -(-height // f), -(-width // f)
    dec = RangeDecoder(body[4 + n:])
    values = []
    for ch in range(n):
        a = [4096]
        for _ in range(126):
            a.append(a[-1] * decays[ch] // 256)
        counts = [max(1, a[abs(d)]) for d in range(-126, 127)]
        table = cdf(counts, 2)
        q = [[0] * gw for _ in range(gh)]
        for i in range(gh):
            for j in range(gw):
                d = dec.decode(table) - 126
                if flags & (2 << ch):
                    left = q[i][j - 1] if j else (q[i - 1][j] if i else 0)
                    up = q[i - 1][j] if i else left
                    d += (left + up) >> 1
                if abs(d) > 63:
                    raise Refuse("extension", "value out of range")
                q[i][j] = d
        values.append(q)
    dec.finish()
    return cell, grey, steps, values
