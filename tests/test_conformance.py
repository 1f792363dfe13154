"""The conformance suite (spec/conformance/, spec/FORMAT.md section 9): tokc and the independent
reference decoder (tests/refdecoder.py, written from the spec alone) both give every file's
expected result: the refusal reason, or the kept tokens and the generated tokens."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import refdecoder as ref
from conftest import DATA, ROOT

SUITE = ROOT / "spec" / "conformance"
MANIFEST = json.loads((SUITE / "manifest.json").read_text())
DECODE = [e for e in MANIFEST["files"] if e["expect"] == "decode"]
REFUSE = [e for e in MANIFEST["files"] if e["expect"] == "refuse"]

# tokc's one-line errors, mapped to the reason codes of spec section 1.6 (first match wins)
TOKC_REASONS = [
    ("magic", r"magic bytes|is an image"), ("truncated", r"^file is truncated$"), ("version", r"format version"),
    ("file_crc", r"file CRC-32 mismatch"), ("header", r"varint|header is cut short|header length|after its last field"),
    ("dimensions", r"image size|over the limit"), ("grid", r"token size"), ("mode", r"mask mode"),
    ("extension", r"critical extension|display size|tone and colour correction"), ("schedule", r"uses schedule"), ("coder", r"uses coder"),
    ("codebook", r"codebook"), ("payload_length", r"whole number of 32-bit words"), ("model", r"made with model"),
    ("token_crc", r"fail their CRC-32"), ("mask_check", r"mask check"), ("decoder", r"fidelity decoder"),
    ("payload", r"damaged|payload"),
]


def tokc_reason(e: Exception) -> str:
    return next((code for code, pattern in TOKC_REASONS if re.search(pattern, str(e))), f"unmapped: {e}")


@pytest.fixture(scope="module")
def model():
    return ref.Model(SUITE / MANIFEST["model"])


@pytest.fixture(scope="module")
def suite_codec():
    from tokcodec.codec import Codec
    return Codec(str(SUITE), "cpu")


def data(entry) -> bytes:
    return (SUITE / entry["file"]).read_bytes()


def test_suite_uses_the_test_model_and_all_ids_agree(model, suite_codec):
    assert (SUITE / "tokc.safetensors").read_bytes() == (DATA / "tokc.safetensors").read_bytes()
    assert MANIFEST["prior_file"] == "prior.safetensors" and not (DATA / "prior.safetensors").exists()
    assert MANIFEST["fidelity_decoders"] == {"1": "fidelity.safetensors"}
    assert model.decoders == {0, 1} and suite_codec.model.fidelity == 1
    ids = (MANIFEST["model_id"], MANIFEST["legacy_model_id"], MANIFEST["prior_file_model_id"])
    assert tuple(i.hex() for i in model.ids) == ids
    m = suite_codec.model  # new files name the prior file's id; the base file's two stay accepted
    assert (m.base_id.hex(), m.legacy_id.hex(), m.model_id.hex()) == ids


def test_suite_covers_what_the_spec_lists():
    hd = [e["header"] for e in DECODE]
    assert {h["mode"] for h in hd} == {"entire", "edge", "edge_more", "checkerboard"}
    assert {h["codebook"] for h in hd} == {16, 64} and {h["coder_id"] for h in hd} == {1, 2}
    assert any(h["width"] % 32 and h["height"] % 32 for h in hd)  # odd sizes
    assert any(h["width"] >= 128 for h in hd) and any(h["extensions"] for h in hd) and any(h["minor"] for h in hd)
    assert any(g["t"] and g["seed"] >= 2 ** 63 for e in DECODE for g in e["generated"])
    assert any("display" in e.get("pixels", {}) for e in DECODE)  # extension 3, upsampled pixels
    # every model id a file may carry (section 6): bitstream, legacy whole-file, prior file
    assert {h["model_id"] for h in hd} == {MANIFEST["model_id"], MANIFEST["legacy_model_id"],
                                           MANIFEST["prior_file_model_id"]}
    assert any(e["generated"] and e["header"]["model_id"] == MANIFEST["prior_file_model_id"] for e in DECODE)
    # tone and colour corrections (section 11) with expected pixels: colour, grey with a grid, grey alone
    assert {e["header"]["extensions"][0][1][:4] for e in DECODE if "pixels" in e and e["header"]["extensions"]
            and e["header"]["extensions"][0][0] == 2} == {"0102", "0103", "0001"}
    # both fidelity decoders (section 8.4), each with expected pixels
    assert {e["header"]["decoder"] for e in DECODE if "pixels" in e} == {0, 1}
    assert {e["reason"] for e in REFUSE} == {
        "magic", "truncated", "version", "file_crc", "header", "dimensions", "grid", "mode", "codebook",
        "extension", "schedule", "coder", "payload_length", "model", "payload", "token_crc", "mask_check",
        "decoder"}


@pytest.mark.parametrize("entry", DECODE, ids=lambda e: e["file"])
def test_reference_decoder_gives_the_expected_tokens(entry, model):
    d = ref.decode(data(entry), model)
    want = entry["header"]
    assert (d.header.width, d.header.height, d.header.k, d.header.mode, list(d.header.grid)) == (
        want["width"], want["height"], want["codebook"], want["mode"], want["grid"])
    assert (d.header.overhead, len(d.header.payload), sum(d.keep)) == (
        want["overhead_bytes"], want["payload_bytes"], want["tokens_kept"])
    assert d.tokens == entry["tokens"]
    for g in entry["generated"]:
        assert ref.generate(d, model, g["seed"], g["t"]) == g["tokens"], (g["seed"], g["t"])


@pytest.mark.parametrize("entry", DECODE, ids=lambda e: e["file"])
def test_tokc_gives_the_expected_tokens(entry, suite_codec):
    from tokcodec.codec import describe
    c = suite_codec.read(data(entry))
    tokens, keep = suite_codec.decode_tokens(c)
    assert tokens.ravel().tolist() == entry["tokens"]
    info = describe(data(entry))
    assert (info["overhead_bytes"], info["tokens_kept"]) == (entry["header"]["overhead_bytes"],
                                                             entry["header"]["tokens_kept"])
    for g in entry["generated"]:
        got = suite_codec.for_model(c.header.model_id).generate(tokens, keep, c.header.codebook, g["seed"],
                                                                g["t"] / 1000, c.header.coder_id)
        assert got.ravel().tolist() == g["tokens"], (g["seed"], g["t"])


def test_without_the_prior_file_its_files_are_refused(tmp_path):
    """A decoder holding the base file alone refuses the prior file's files for their model id
    (section 6), and still decodes the base file's."""
    from tokcodec.codec import Codec
    base_only = ref.Model(DATA / "tokc.safetensors")
    codec = Codec(str(DATA), "cpu")
    for e in DECODE:
        raw = data(e)
        if e["header"]["model_id"] != MANIFEST["prior_file_model_id"]:
            continue
        with pytest.raises(ref.Refuse) as r:
            ref.decode(raw, base_only)
        assert r.value.reason == "model"
        with pytest.raises(RuntimeError) as t:
            codec.decode_tokens(codec.read(raw))
        assert tokc_reason(t.value) == "model"


@pytest.mark.parametrize("entry", REFUSE, ids=lambda e: e["file"])
def test_refusals(entry, model, suite_codec):
    from tokcodec.codec import describe
    raw = data(entry)
    with pytest.raises(ref.Refuse) as r:
        ref.decode(raw, model)
    assert r.value.reason == entry["reason"]
    with pytest.raises((ValueError, RuntimeError)) as t:  # FormatError, CodecError, DecodeError
        suite_codec.decode(raw, max_pixels=MANIFEST["max_pixels"])  # the whole decode: correction included
    assert tokc_reason(t.value) == entry["reason"]
    # a reader without the model (tokc info) refuses exactly the files the spec says it can
    for reader, errors in ((ref.describe, ref.Refuse), (describe, (ValueError, RuntimeError))):
        if entry["model_less"] == "refuse":
            with pytest.raises(errors):
                reader(raw)
        elif entry["model_less"] == "accept":
            reader(raw)


@pytest.mark.parametrize("entry", [e for e in DECODE if "pixels" in e], ids=lambda e: e["file"])
def test_pixels_within_the_tolerance(entry, model, suite_codec):
    from PIL import Image
    px = entry["pixels"]
    want = np.asarray(Image.open(SUITE / px["png"])).astype(int)
    h = entry["header"]
    full = entry["generated"][0]["tokens"] if entry["generated"] else entry["tokens"]
    tokc = np.asarray(suite_codec.render(np.array(full).reshape(h["grid"]), h["codebook"],
                                         (h["width"], h["height"]), px["realism"], px["seed"],
                                         h["decoder"])).astype(int)
    mine = ref.render(full, *h["grid"], h["codebook"], model, h["width"], h["height"], fidelity=h["decoder"])
    corr = ref.correction_of(ref.parse(data(entry)))
    if corr is not None:  # section 11.3, each implementation its own
        from tokcodec.correction import read_correction
        tokc = np.asarray(suite_codec.finish_pixels(Image.fromarray(tokc.astype(np.uint8)),
                                                    read_correction(suite_codec.read(data(entry))))).astype(int)
        mine = ref.apply_correction(mine, corr)
    if "display" in px:  # section 12: upsampled to the display size
        from tokcodec.resample import upsample
        tokc = upsample(tokc.astype(np.uint8), tuple(px["display"])).astype(int)
        mine = ref.upsample(mine, *px["display"])
    mine = mine.astype(int)
    for got in (tokc, mine):
        diff = np.abs(got - want)
        assert diff.max() <= px["tolerance"]["max_abs"]
        assert (diff > 0).mean() <= px["tolerance"]["max_share_differing"]


@pytest.mark.parametrize("name", ["edge_k16_2624x32_coder2_cdf.tkc", "coder1_edge_k16_2624x32_cdf.tkc"])
def test_crafted_files_tell_the_two_quantisations_apart(name, model, monkeypatch):
    """Decoding a coder-1 file with coder 2's integer tables (or the reverse) must fail."""
    raw = (SUITE / name).read_bytes()
    ref.decode(raw, model)
    right = ref.cdf
    monkeypatch.setattr(ref, "cdf", lambda counts, coder: right(counts, 3 - coder))
    with pytest.raises(ref.Refuse):
        ref.decode(raw, model)


def test_range_coder_words_follow_the_spec_encoder():
    """tokc's coder (constriction) writes exactly the words of the spec's encoder (section 4.5),
    carries included, for both quantisations."""
    from tokcodec import entropy
    rng = np.random.default_rng(0)
    for trial in range(40):
        k = int(rng.choice([2, 3, 16, 64, 1024]))
        n = int(rng.integers(1, 120))
        logits = rng.normal(size=(n, k)) * rng.random() * 40
        w = np.exp(logits - logits.max(1, keepdims=True))
        counts = np.floor(w / w.sum(1, keepdims=True) * ((1 << 20) - k)).astype(np.int64) + 1
        for coder in (1, 2):
            tables = [ref.cdf(row.tolist(), coder) for row in counts]
            assert [list(t) for t in entropy.quantized_cdf(counts, coder)] == tables
            sym = [int(rng.integers(0, k)) if rng.random() < 0.2 else int(np.argmax(row)) for row in counts]
            enc = entropy.Encoder(coder)
            enc.encode(np.array(sym), counts)
            words = enc.finish()
            assert np.frombuffer(words, "<u4").tolist() == ref.encode([(t[s], t[s + 1]) for t, s in zip(tables, sym)])
            dec = ref.RangeDecoder(words)
            assert [dec.decode(t) for t in tables] == sym
            dec.finish()


@pytest.mark.parametrize("path", [DATA / "tokc.safetensors", SUITE / "prior.safetensors",
                                  ROOT / "weights" / "tokc.safetensors", ROOT / "weights" / "prior.safetensors"],
                         ids=["tiny", "suite_prior_file", "shipped", "shipped_prior_file"])
def test_integer_ranges_fit_int64(path):
    """Section 5.3: every intermediate of the exact prior fits in int64, and every sum a matrix
    product forms stays below 2**53 (so float64 products are exact), for any input grid: the
    priors of the base files and of the prior files (section 6) beside them."""
    if not path.is_file():
        pytest.skip(f"no {path.name} in {path.parent}")
    b = ref.static_bounds(ref.Weights(path))
    assert max(b.values()) < 2 ** 62
    assert b["matrix_product_sum"] < 2 ** 53 and 2 * b["attention_sum"] < 2 ** 53


def test_spec_check_values():
    """The check values printed in spec/FORMAT.md (sections 0, 4.1, 5.1, 7.4, appendix A)."""
    from tokcodec import entropy, rng
    assert ref.crc32(b"123456789") == 0xCBF43926
    assert (ref.EXP[0], ref.EXP[1], ref.EXP[256], ref.EXP[3016] > 0, ref.EXP[3017]) == (65536, 65280, 24109, True, 0)
    assert ref.cdf([55, 55], 1) == [0, 8388607, 2 ** 24] and ref.cdf([55, 55], 2) == [0, 8388608, 2 ** 24]
    assert entropy.quantized_cdf(np.array([[55, 55]]), 1).tolist() == [ref.cdf([55, 55], 1)]
    assert ref._rn(16777214, 110) == (5240551668944970, -35)
    assert rng.seed_sequence_state(0) == [0xB0F478BE, 0xDB2CD7E7, 0x2C71BA49, 0xABF4641A,
                                          0x9D7B8D41, 0x20C6ED6D, 0x223C39D4, 0x2C4099DE]
    g = rng.LegacyGenerator(0)
    assert [g.next64(), g.next64()] == [0xA30FEBCFD9C2825F, 0x4510BDF882D9D721]
    assert [ref.LegacyPCG64(0).below(1000)] == [850]
    g = rng.LegacyGenerator(0)
    assert [g.below(1000) for _ in range(4)] == [850, 636, 511, 269]


def test_realism_decoder_follows_section_8_3(tmp_path, model):
    """Section 8.3 with tokc's own noise source: the float64 reference and tokc agree within the
    tolerance at r > 0, and r = 0 is exactly the fidelity decoder."""
    import shutil

    import torch

    from tiny import make_decoder
    from tokcodec.codec import Codec
    shutil.copy(SUITE / "tokc.safetensors", tmp_path / "tokc.safetensors")
    make_decoder(tmp_path)
    codec = Codec(str(tmp_path), "cpu")
    entry = next(e for e in DECODE if e["file"] == "entire_k64_40x24.tkc")
    h = entry["header"]
    grid = np.array(entry["tokens"]).reshape(h["grid"])
    size = (h["width"], h["height"])
    assert np.array_equal(np.asarray(codec.render(grid, 64, size, 0.0, 5)),
                          np.asarray(Codec(str(SUITE), "cpu").render(grid, 64, size, 0.0, 5)))
    for r in (0.3, 1.0):
        gen = torch.Generator().manual_seed(5)
        want = ref.render(entry["tokens"], *h["grid"], 64, model, *size, realism=r,
                          decoder=ref.Weights(tmp_path / "decoder.safetensors"),
                          noise=lambda hh, ww: torch.randn(1, 1, hh, ww, generator=gen)[0, 0].double().numpy())
        got = np.asarray(codec.render(grid, 64, size, r, 5))
        diff = np.abs(got.astype(int) - want.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() <= 0.01
        assert not np.array_equal(got, np.asarray(codec.render(grid, 64, size, 0.0, 5)))
