"""Build the conformance suite in spec/conformance/ (run: python tests/make_conformance.py).

Files are made with tokc and the tiny test model (tests/data/tokc.safetensors, copied into the
suite); the expected results are tokc's decodes, checked independently by tests/refdecoder.py
in tests/test_conformance.py. Re-running rewrites the suite: the encoder side is float, so a
different machine may write different valid files; expected results always match the files.
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
OUT = HERE.parent / "spec" / "conformance"
MODEL = HERE / "data" / "tokc.safetensors"

# generation cases: (seed, temperature in thousandths)
GENERATE = [(0, 0), (7, 1000), (2 ** 64 - 1, 350), (12345, 2500)]
GENERATE_SHORT = [(0, 0), (7, 1000)]
# the suite's prior file (spec section 6): a random prior for the test model whose config differs
# from the base file's in every field a decoder must read from it (dim, depth, heads, mlp, window)
PRIOR_FILE = dict(dim=24, depth=3, heads=3, mlp=40, window=8, seed=11)
FIDELITY_SEED = 12  # the suite's fidelity decoder 1 (spec 8.4): random weights of decoder 0's shapes


def varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def split(data: bytes) -> dict:
    """A valid file's parts, to rebuild it with changes (no validation)."""
    pos = 6
    hlen, n = 0, 0
    while True:
        b = data[pos]
        hlen |= (b & 0x7F) << (7 * n)
        pos, n = pos + 1, n + 1
        if not b & 0x80:
            break
    body = data[pos:pos + hlen]
    return {"version": data[4:6], "body": body, "payload": data[pos + hlen:-4]}


def field_offsets(body: bytes) -> dict:
    """Offsets inside a header body: after width/height varints come the fixed fields."""
    p = 0
    for _ in range(2):
        while body[p] & 0x80:
            p += 1
        p += 1
    return {"model_id": p, "grid_log2": p + 4, "params": p + 5, "schedule_id": p + 6, "coder_id": p + 7,
            "token_crc32": p + 8, "n_ext": p + 12}


def assemble(version: bytes, body: bytes, payload: bytes, crc: bool = True) -> bytes:
    out = b"\x89TKC" + version + varint(len(body)) + body + payload
    return out + struct.pack("<I", zlib.crc32(out) if crc else (zlib.crc32(out) ^ 1))


def body_with(body: bytes, **changes) -> bytes:
    b = bytearray(body)
    off = field_offsets(body)
    for name, value in changes.items():
        if name == "token_crc32":
            b[off[name]:off[name] + 4] = struct.pack("<I", value)
        elif name == "model_id":
            b[off[name]:off[name] + 4] = value
        else:
            b[off[name]] = value
    return bytes(b)


def body_dims(body: bytes, width_bytes: bytes | None = None, height_bytes: bytes | None = None) -> bytes:
    p = 0
    while body[p] & 0x80:
        p += 1
    w = body[:p + 1]
    q = p + 1
    while body[q] & 0x80:
        q += 1
    h = body[p + 1:q + 1]
    return (width_bytes or w) + (height_bytes or h) + body[q + 1:]


def body_exts(body: bytes, exts: list[tuple[int, bytes]], tail: bytes | None = None,
              n_ext: bytes | None = None) -> bytes:
    """Replace the extensions of a body that has none; `tail` (default: what followed them, the
    mask_check byte of a 1.2 body) comes after the new ones."""
    off = field_offsets(body)["n_ext"]
    assert body[off] == 0, "body_exts expects a body without extensions"
    tail = body[off + 1:] if tail is None else tail
    out = body[:off] + (n_ext if n_ext is not None else varint(len(exts)))
    for tag, data in exts:
        out += varint(tag) + varint(len(data)) + data
    return out + tail


def blocks_through_55_55() -> np.ndarray:
    """A one-row block map (82 blocks) whose context 0 codes a bit with the counts (55, 55): the
    one table of the block map on which coder 1's binary64 quantisation and coder 2's integer
    one disagree (cdf[1] = 8388606 against 8388607), so a decoder that mixes them up fails.
    Context of a bit in row 0 = its left neighbour: 27 zeros after a zero, then 27 times
    (one after a zero, zero after a one), then the bit coded with (55, 55)."""
    bits = [0] * 27 + [1, 0] * 27 + [1]
    return np.array([bits], dtype=bool)


def main() -> None:
    import refdecoder
    from tiny import make_fidelity, make_prior, photo
    from tokcodec import container, entropy
    from tokcodec import correction as tone
    from tokcodec.codec import Codec, Setting, describe
    from tokcodec.prior import PriorConfig
    from tokcodec.weights import PRIOR_FILENAME, bitstream_tensors, model_id
    from safetensors.torch import load_file

    codec = Codec(str(MODEL.parent), "cpu")
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    shutil.copy(MODEL, OUT / "tokc.safetensors")
    tensors = load_file(str(MODEL))
    cfg = {k: v for k, v in PRIOR_FILE.items() if k != "seed"}
    prior_id = make_prior(OUT, seed=PRIOR_FILE["seed"], cfg=PriorConfig(**cfg, codebooks=(64, 16)))
    make_fidelity(OUT, number=1, seed=FIDELITY_SEED)
    # the test model with the prior file and fidelity decoder 1: it reads every file of the suite,
    # and the files it writes name both (as tokc does with weights v5)
    suite = Codec(str(OUT), "cpu")
    reference = refdecoder.Model(OUT / "tokc.safetensors")  # the suite's weights, for the expected pixels
    manifest = {
        "about": "tokc conformance suite: see spec/FORMAT.md section 9",
        "model": "tokc.safetensors",
        "model_id": model_id(bitstream_tensors(tensors)).hex(),
        "legacy_model_id": model_id(tensors).hex(),
        "prior_file": PRIOR_FILENAME,
        "prior_file_model_id": prior_id.hex(),
        "fidelity_decoders": {"1": "fidelity.safetensors"},
        "max_pixels": 64_000_000,
        "files": [],
    }
    files: dict[str, bytes] = {}

    def encode(w, h, k, mode, q=0.0, coder=2, seed=3, blocks=None, using=codec):
        """A file of the test model's own prior, or with `using=suite` one of the prior file."""
        entropy.CODER_ID = coder
        try:
            # nearest codewords and edge blocks ranked by edge strength, as when the suite was made
            a = using.analyse(photo(w, h, seed=seed), tokens="nearest")
            a["blocks"] = "edges"
            if blocks is not None:  # any block map is valid: make select_blocks pick exactly these
                a["strength"] = blocks.astype(np.float64)
                q = float(blocks.mean())
            return using.encode_setting(a, Setting(k, mode, q)).data
        finally:
            entropy.CODER_ID = 2

    def decodable(name, data, what, gen=GENERATE, pixels=False):
        files[name] = data
        c = suite.read(data)
        tokens, keep = suite.decode_tokens(c)
        hd = c.header
        info = describe(data)
        entry = {"file": name, "what": what, "expect": "decode",
                 "header": {"width": hd.width, "height": hd.height, "codebook": hd.codebook, "mode": hd.mode,
                            "grid": list(hd.grid), "schedule_id": hd.schedule_id, "coder_id": hd.coder_id,
                            "model_id": hd.model_id.hex(), "minor": hd.minor, "decoder": hd.decoder,
                            "extensions": [[t, d.hex()] for t, d in hd.extensions],
                            "token_crc32": f"{hd.token_crc32:08x}", "tokens_kept": int(keep.sum()),
                            "payload_bytes": info["payload_bytes"], "overhead_bytes": info["overhead_bytes"]},
                 "tokens": tokens.ravel().tolist(), "generated": []}
        if not keep.all():
            for seed, t in gen:
                g = suite.for_model(hd.model_id).generate(tokens, keep, hd.codebook, seed, t / 1000, hd.coder_id)
                entry["generated"].append({"seed": seed, "t": t, "tokens": g.ravel().tolist()})
        if pixels:
            full = entry["generated"][0]["tokens"] if entry["generated"] else entry["tokens"]
            rgb = refdecoder.render(full, *hd.grid, hd.codebook, reference, hd.width, hd.height, fidelity=hd.decoder)
            corr = refdecoder.correction_of(refdecoder.parse(data))
            if corr is not None:  # section 11.3, before any upsampling to the display size
                rgb = refdecoder.apply_correction(rgb, corr)
            shown = container.display_size(hd)
            if shown is not None:  # section 12: the rendered image upsampled to its display size
                rgb = refdecoder.upsample(rgb, *shown)
            from PIL import Image
            png = name.replace(".tkc", ".png")
            Image.fromarray(rgb).save(OUT / png)
            entry["pixels"] = {"png": png, "seed": 0, "t": 0, "realism": 0,
                               "tolerance": {"max_abs": 1, "max_share_differing": 0.01}}
            if shown is not None:
                entry["pixels"]["display"] = list(shown)
        manifest["files"].append(entry)
        return data

    def refused(name, data, reason, what, model_less="refuse"):
        """model_less: what a reader without the model (section 1.7) does: "refuse", "accept", or
        "either" (a payload that a lower bound on its contents may already show too short)."""
        files[name] = data
        manifest["files"].append({"file": name, "what": what, "expect": "refuse", "reason": reason,
                                  "model_less": model_less})

    # ---- valid files, coder 2 (what tokc writes)
    tiny = decodable("entire_k16_1x1.tkc", encode(1, 1, 16, "entire"),
                     "smallest image: 1x1 pixel, 2x2 token grid, 26 bytes of overhead", pixels=True)
    decodable("entire_k64_40x24.tkc", encode(40, 24, 64, "entire"), "mode entire, K=64", pixels=True)
    decodable("checkerboard_k16_31x17.tkc", encode(31, 17, 16, "checkerboard"),
              "mode checkerboard, odd size", pixels=True)
    edge = decodable("edge_k64_96x64.tkc", encode(96, 64, 64, "edge", 0.3), "mode edge, 30% of blocks")
    decodable("edge_more_k16_33x65.tkc", encode(33, 65, 16, "edge_more", 0.5), "mode edge_more, odd size")
    decodable("edge_k16_200x130_no_blocks.tkc", encode(200, 130, 16, "edge", 0.0),
              "mode edge with an all-zero block map; 2-byte width/height varints", gen=GENERATE_SHORT)
    decodable("edge_more_k64_64x64_all_blocks.tkc", encode(64, 64, 64, "edge_more", 1.0),
              "mode edge_more with every block: nothing to generate")
    decodable("checkerboard_k64_300x290.tkc", encode(300, 290, 64, "checkerboard"),
              "20x20 token grid: base stride 4, 7 stages", gen=GENERATE_SHORT)
    decodable("edge_k16_2624x32_coder2_cdf.tkc", encode(2624, 32, 16, "edge", blocks=blocks_through_55_55()),
              "block map coding a bit with counts (55, 55), where coder 1 and coder 2 tables differ", gen=[])
    # extensions and later minors, rebuilt from the edge file (same payload, same tokens)
    p = split(edge)
    decodable("ext_ancillary.tkc",
              assemble(b"\x01\x00", body_exts(p["body"][:-2], [(2, b"hello"), (300, bytes(range(130)))]),
                       p["payload"]),
              "version 1.0 with two ancillary extensions: tag 2, unknown in 1.0, and tag 300 (130 bytes: "
              "2-byte varints, 2-byte header_len)",
              gen=GENERATE_SHORT)
    decodable("minor_4_appended_fields.tkc",
              assemble(b"\x01\x04", p["body"] + b"\x01\x02\x03\x04\x05", p["payload"]),
              "version 1.4: five header bytes after the decoder field are skipped", gen=GENERATE_SHORT)
    decodable("minor_2_no_decoder.tkc", assemble(b"\x01\x02", p["body"][:-1], p["payload"]),
              "version 1.2 (no decoder field: fidelity decoder 0), as tokc wrote before 1.3", gen=[])
    decodable("minor_1_no_mask_check.tkc", assemble(b"\x01\x01", p["body"][:-2], p["payload"]),
              "version 1.1 (no mask check): the same file as tokc wrote before 1.2", gen=[])
    # extension 3 (display size, section 12), rebuilt from the 40x24 file
    ent = split(files["entire_k64_40x24.tkc"])

    def shown(*sizes, extra=b""):
        return body_exts(ent["body"], [(3, varint(w) + varint(h) + extra) for w, h in sizes])
    decodable("display_k64_40x24_to_100x61.tkc", assemble(ent["version"], shown((100, 61)), ent["payload"]),
              "extension 3: the 40x24 image shown at 100x61 (section 12)", pixels=True)
    # extension 2 (tone and colour correction, section 11), added to files above: a colour grid
    # (channel Y a smooth ramp, coded predicted; Cb and Cr noisy), a grey grid, and grey alone
    def corrected(base: str, corr) -> bytes:
        return container.with_extension(files[base], tone.TAG, tone.pack(corr), minor=1)
    rng = np.random.default_rng(5)
    gh, gw = tone.grid_shape(40, 24, 1)
    ramp = 6 + 5 * np.arange(gh)[:, None] + 3 * np.arange(gw)[None, :]
    colour = np.stack([ramp, rng.integers(-40, 41, (gh, gw)), rng.integers(-40, 41, (gh, gw))])
    decodable("correction_k64_40x24.tkc", corrected("entire_k64_40x24.tkc", tone.Correction(1, False, (3, 2), colour)),
              "extension 2: a 2x3 colour grid of 16-px cells (Y predicted, steps 3 and 2) on the 40x24 file",
              pixels=True)
    decodable("correction_display_k64_40x24_to_100x61.tkc",
              corrected("display_k64_40x24_to_100x61.tkc", tone.Correction(1, False, (3, 2), colour)),
              "extensions 3 and 2, as tokc's reduced files carry them: the 40x24 image corrected at its "
              "coded size (section 11), then shown at 100x61 (section 12.2)", pixels=True)
    gh, gw = tone.grid_shape(31, 17, 1)
    decodable("correction_grey_k16_31x17.tkc",
              corrected("checkerboard_k16_31x17.tkc",
                        tone.Correction(1, True, (5, 1), rng.integers(-12, 13, (1, gh, gw)))),
              "extension 2: grey flag with a Y grid (step 5): the corrected picture in grey", pixels=True)
    decodable("correction_grey_only_k16_1x1.tkc", corrected("entire_k16_1x1.tkc", tone.Correction(0, True)),
              "extension 2: grey flag without a grid (2-byte body)", pixels=True)

    # ---- valid files of the prior file (its own model id, section 6), as tokc writes with weights v5
    decodable("prior_file_edge_k64_200x130.tkc", encode(200, 130, 64, "edge", 0.3, using=suite),
              "prior file's model id: coded and generated with the prior file's prior (dim 24, depth 3, "
              "heads 3, window 8), mode edge, K=64; names fidelity decoder 1, whose pixels are given",
              pixels=True)
    decodable("prior_file_checkerboard_k16_300x290.tkc", encode(300, 290, 16, "checkerboard", using=suite),
              "prior file's model id, mode checkerboard, K=16, 20x20 token grid (several windows of 8)",
              gen=GENERATE_SHORT)
    # ---- valid files, coder 1 (legacy: still decoded, sampled with the legacy generator)
    decodable("coder1_edge_k64_96x64.tkc", encode(96, 64, 64, "edge", 0.3, coder=1),
              "coder 1 (binary64 quantisation, legacy PCG64 sampling)")
    decodable("coder1_edge_more_k16_200x130.tkc", encode(200, 130, 16, "edge_more", 0.4, coder=1),
              "coder 1, mode edge_more", gen=GENERATE_SHORT)
    decodable("coder1_edge_k16_2624x32_cdf.tkc", encode(2624, 32, 16, "edge", coder=1, blocks=blocks_through_55_55()),
              "coder 1: a bit coded with counts (55, 55), whose binary64 table differs from coder 2's", gen=[])
    decodable("coder1_legacy_model_id.tkc", (HERE / "data" / "golden_edge_k64.tkc").read_bytes(),
              "coder 1 file carrying the legacy whole-file model id", gen=GENERATE_SHORT)

    # ---- refusals (each file has exactly one defect; CRCs are valid unless the CRC is the defect)
    t = split(tiny)
    v, b, pl = t["version"], t["body"], t["payload"]
    refused("refuse_magic.tkc", b"\x89TKX" + tiny[4:], "magic", "wrong magic")
    refused("refuse_truncated.tkc", tiny[:20], "truncated", "20 bytes: shorter than any .tkc file")
    refused("refuse_version_2.tkc", assemble(b"\x02\x00", b, pl), "version", "major version 2")
    refused("refuse_file_crc.tkc", assemble(v, b, pl, crc=False), "file_crc", "file CRC-32 off by one bit")
    refused("refuse_varint_not_shortest.tkc", assemble(v, body_dims(b, width_bytes=b"\x81\x00"), pl), "header",
            "width 1 written as 81 00 (not the shortest form)")
    refused("refuse_varint_too_long.tkc", assemble(v, body_exts(b, [], n_ext=b"\x80" * 10 + b"\x00"), pl), "header",
            "n_ext varint of 11 bytes")
    refused("refuse_varint_over_2_64.tkc", assemble(v, body_exts(b, [], n_ext=b"\xff" * 9 + b"\x02"), pl), "header",
            "n_ext varint of 10 bytes with a value of 2^64 or more")
    refused("refuse_header_len_past_end.tkc",
            (lambda d: d + struct.pack("<I", zlib.crc32(d)))(b"\x89TKC" + v + varint(len(b) + len(pl) + 1) + b + pl),
            "header", "header_len points past the end of the file")
    refused("refuse_header_trailing_bytes_1_0.tkc", assemble(b"\x01\x00", b[:-2] + b"\x00", pl), "header",
            "a 1.0 header with a byte after its last field")
    refused("refuse_header_trailing_bytes_1_3.tkc", assemble(v, b + b"\x00", pl), "header",
            "a 1.3 header with a byte after its last field (the decoder field)")
    refused("refuse_mask_check_missing.tkc", assemble(b"\x01\x02", b[:-2], pl), "header",
            "a 1.2 header that ends after its extensions (no mask_check)")
    refused("refuse_decoder_missing.tkc", assemble(v, b[:-1], pl), "header",
            "a 1.3 header that ends after mask_check (no decoder field)")
    refused("refuse_mask_check.tkc", assemble(v, b[:-2] + bytes([b[-2] ^ 0x5A]) + b[-1:], pl), "mask_check",
            "mask_check of another keep mask")
    refused("refuse_decoder_2.tkc", assemble(v, b[:-1] + b"\x02", pl), "decoder",
            "fidelity decoder 2, which the suite's weights do not have (they have 0 and 1)", "accept")
    refused("refuse_width_0.tkc", assemble(v, body_dims(b, width_bytes=b"\x00"), pl), "dimensions", "width 0")
    refused("refuse_width_65536.tkc", assemble(v, body_dims(b, width_bytes=varint(65536)), pl), "dimensions",
            "width 65536 (3-byte varint)")
    refused("refuse_pixels_over_limit.tkc", assemble(v, body_dims(b, varint(65535), varint(65535)), pl),
            "dimensions", "65535x65535: over the default pixel limit of 64,000,000")
    refused("refuse_grid_log2_5.tkc", assemble(v, body_with(b, grid_log2=5), pl), "grid", "grid_log2 5")
    refused("refuse_mode_4.tkc", assemble(v, body_with(b, params=(4 << 4) | 4), pl), "mode", "mask mode 4")
    refused("refuse_log2k_0.tkc", assemble(v, body_with(b, params=0), pl), "codebook", "log2 K = 0")
    refused("refuse_k32_not_in_model.tkc", assemble(v, body_with(b, params=5), pl), "codebook",
            "K = 32: valid in the format, absent from the model", "accept")
    refused("refuse_critical_extension.tkc", assemble(v, body_exts(b, [(5, b"x")]), pl), "extension",
            "unknown critical extension (tag 5)")
    refused("refuse_display_smaller.tkc", assemble(ent["version"], shown((39, 24)), ent["payload"]), "extension",
            "display size 39x24 for a 40x24 image (smaller than coded)")
    refused("refuse_display_over_16x.tkc", assemble(ent["version"], shown((641, 24)), ent["payload"]), "extension",
            "display width 641 for a 40-px-wide image (over 16 times)")
    refused("refuse_display_trailing_byte.tkc", assemble(ent["version"], shown((100, 61), extra=b"\x00"),
                                                         ent["payload"]), "extension",
            "a byte after the display size's two varints")
    refused("refuse_display_twice.tkc", assemble(ent["version"], shown((100, 61), (100, 61)), ent["payload"]),
            "extension", "two display sizes")
    refused("refuse_display_over_limit.tkc",
            assemble(v, body_exts(body_dims(b, varint(4000), varint(4000)), [(3, varint(16000) + varint(16000))]), pl),
            "dimensions", "a 4000x4000 image shown at 16000x16000: over the default pixel limit of 64,000,000")
    refused("refuse_correction_twice.tkc", assemble(v, body_exts(b, [(2, b"\x00\x00"), (2, b"\x00\x00")]), pl),
            "extension", "two tone and colour corrections (extension 2)")
    refused("refuse_correction_zero_step.tkc", assemble(v, body_exts(b, [(2, b"\x02\x00\x00\x02\x10\x10\x10")]), pl),
            "extension", "a correction grid with step_y 0")
    refused("refuse_correction_after_empty_grid.tkc", assemble(v, body_exts(b, [(2, b"\x00\x00\x00")]), pl),
            "extension", "a byte after an empty correction grid's 2-byte body")
    refused("refuse_schedule_2.tkc", assemble(v, body_with(b, schedule_id=2), pl), "schedule", "schedule id 2")
    refused("refuse_coder_3.tkc", assemble(v, body_with(b, coder_id=3), pl), "coder", "coder id 3")
    refused("refuse_coder_0.tkc", assemble(v, body_with(b, coder_id=0), pl), "coder", "coder id 0")
    refused("refuse_payload_not_words.tkc", assemble(v, b, pl + b"\x00\x00"), "payload_length",
            "payload of 4n+2 bytes")
    refused("refuse_model_id.tkc", assemble(v, body_with(b, model_id=b"\x00\x11\x22\x33"), pl), "model",
            "model id of another model", "accept")
    refused("refuse_extra_payload_word.tkc", assemble(v, b, pl + b"\x00\x00\x00\x00"), "payload",
            "a zero word after the coder's last word", "accept")
    e = split(edge)
    refused("refuse_payload_last_word_dropped.tkc", assemble(e["version"], e["body"], e["payload"][:-4]), "payload",
            "edge file without its last payload word", "either")
    refused("refuse_empty_payload.tkc", assemble(v, b, b""), "payload", "no payload words at all", "either")
    big = split(files["checkerboard_k64_300x290.tkc"])
    refused("refuse_block_map_past_end.tkc",
            assemble(big["version"], body_with(big["body"], params=(1 << 4) | 6), b""), "payload",
            "mode edge, empty payload: the block map reads past the end")
    refused("refuse_height_mutated.tkc", assemble(big["version"], body_dims(big["body"], height_bytes=varint(16256)),
                                                   big["payload"]), "mask_check",
            "the 300x290 checkerboard file declaring 300x16256: its grid's keep mask fails the mask check "
            "before any prior pass (CRCs valid)")
    refused("refuse_token_crc.tkc", assemble(v, body_with(b, token_crc32=0x12345678), pl), "token_crc",
            "token CRC-32 of other tokens", "accept")

    for name, data in files.items():
        (OUT / name).write_bytes(data)
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{len(files)} files in {OUT}")


if __name__ == "__main__":
    main()
