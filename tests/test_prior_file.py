"""A newer prior shipped beside the base file (weights/prior.safetensors, spec section 6): new
files name it by its own model id, files of the base file's prior decode as before, and files
or weights that do not match are refused with a clear message."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tiny import PRIOR_CFG, SHALLOW, make_prior, photo
from tokcodec.prior import PriorConfig
from tokcodec.weights import PRIOR_FILENAME, WeightsError, load


@pytest.fixture(scope="module")
def extended(tiny_weights, tmp_path_factory):
    folder = tmp_path_factory.mktemp("extended")
    shutil.copy(tiny_weights / "tokc.safetensors", folder / "tokc.safetensors")
    make_prior(folder)
    return folder


@pytest.fixture(scope="module")
def ext_codec(extended):
    from tokcodec.codec import Codec
    return Codec(str(extended), "cpu")


def test_the_prior_file_gives_the_model_a_new_id_and_keeps_the_old_ones(codec, ext_codec):
    m, base = ext_codec.model, codec.model
    assert m.prior.cfg.depth == 1 and base.prior.cfg.depth == PRIOR_CFG.depth
    assert m.model_id not in (base.model_id, base.legacy_id)
    assert m.base_id == base.model_id and m.legacy_id == base.legacy_id
    assert all(m.accepts(i) for i in (m.model_id, base.model_id, base.legacy_id))
    assert m.prior_for(base.model_id) is not m.prior


def test_new_files_use_the_new_prior_and_old_files_decode_as_before(codec, ext_codec):
    from tokcodec.codec import CodecError
    img = photo(160, 96, seed=4)
    old = codec.encode(img, nbytes=200).data
    new = ext_codec.encode(img, nbytes=200).data
    assert ext_codec.read(new).header.model_id == ext_codec.model.model_id
    # a file of the base prior: the same tokens and pixels with either set of weights
    ta, tb = codec.decode_tokens(codec.read(old)), ext_codec.decode_tokens(ext_codec.read(old))
    assert all(np.array_equal(x, y) for x, y in zip(ta, tb))
    for seed, t in ((0, 0.0), (3, 1.0)):
        assert np.array_equal(np.asarray(codec.decode(old, seed, t)), np.asarray(ext_codec.decode(old, seed, t)))
    # a file of the new prior decodes (its token CRC-32 is checked), and the base weights refuse it
    tokens, keep = ext_codec.decode_tokens(ext_codec.read(new))
    assert keep.any() and np.asarray(ext_codec.decode(new, 1, 0.7)).shape == (96, 160, 3)
    with pytest.raises(CodecError, match=f"made with model {ext_codec.model.model_id.hex()}"):
        codec.decode(new)


def test_trimming_an_old_file_writes_a_file_of_the_new_prior(codec, ext_codec):
    old = codec.encode(photo(320, 192, seed=6), nbytes=400).data
    small = ext_codec.trim(old, len(old) * 2 // 3).data
    assert len(small) <= len(old) * 2 // 3 and ext_codec.read(small).header.model_id == ext_codec.model.model_id
    ext_codec.decode(small)


def test_a_prior_file_for_another_base_or_damaged_is_refused(tiny_weights, fresh_weights, tmp_path):
    shutil.copy(tiny_weights / "tokc.safetensors", tmp_path / "tokc.safetensors")
    make_prior(tmp_path, base=fresh_weights / "tokc.safetensors")
    other = load(fresh_weights).model_id.hex()
    with pytest.raises(WeightsError, match=f"made for model {other}"):
        load(tmp_path)
    (tmp_path / PRIOR_FILENAME).write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="cannot read prior weights"):
        load(tmp_path)
    make_prior(tmp_path, cfg=PriorConfig(**{**SHALLOW.to_dict(), "codebooks": (64,)}))
    with pytest.raises(WeightsError, match="codebooks"):
        load(tmp_path)


def test_the_cli_decodes_files_of_both_priors(codec, extended, tmp_path):
    from click.testing import CliRunner

    from tokcodec.cli import main
    old = tmp_path / "old.tkc"
    old.write_bytes(codec.encode(photo(96, 64, seed=2), nbytes=150).data)
    photo(96, 64, seed=2).save(tmp_path / "in.png")
    run = CliRunner().invoke
    r = run(main, ["encode", str(tmp_path / "in.png"), str(tmp_path / "new.tkc"), "--bytes", "150",
                   "--weights", str(extended)])
    assert r.exit_code == 0, r.output
    for f in ("old.tkc", "new.tkc"):
        r = run(main, ["decode", str(tmp_path / f), str(tmp_path / f"{f}.png"), "--weights", str(extended)])
        assert r.exit_code == 0 and (tmp_path / f"{f}.png").is_file(), r.output
    r = run(main, ["decode", str(tmp_path / "new.tkc"), str(tmp_path / "x.png"), "--weights", str(codec.model.path)])
    assert r.exit_code != 0 and "made with model" in r.output and not (tmp_path / "x.png").exists()


def test_the_reference_decoder_decodes_files_of_both_priors(codec, ext_codec, extended):
    """tests/refdecoder.py, written from spec section 6's text on prior files, gives tokc's kept
    and generated tokens for a file of each prior."""
    import refdecoder as ref
    model = ref.Model(extended / "tokc.safetensors")
    assert set(model.ids) == {i for i in ext_codec.model.priors}
    img = photo(96, 64, seed=8)
    for c in (codec, ext_codec):
        data = c.encode(img, nbytes=90).data
        d = ref.decode(data, model)
        tokens, keep = ext_codec.decode_tokens(ext_codec.read(data))
        assert d.keep == keep.ravel().tolist() and d.tokens == np.where(keep, tokens, c.read(data).header.codebook).ravel().tolist()
        k = c.read(data).header.codebook
        full = ext_codec.for_model(c.model.model_id).generate(tokens, keep, k, 5, 0.8)
        assert ref.generate(d, model, 5, 800) == full.ravel().tolist()


def test_the_base_prior_is_built_only_for_a_file_that_names_it(extended, codec):
    from tokcodec.prior import ExactPrior
    m = load(extended)
    assert not isinstance(m.priors[m.base_id], ExactPrior)  # memory: not built at load
    p = m.prior_for(codec.model.legacy_id)
    assert isinstance(p, ExactPrior) and m.prior_for(m.base_id) is p and p is not m.prior
