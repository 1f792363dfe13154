"""The encoder's effort: "fast" codes at the predicted scale, makes one correction option and
leaves the tokens unpolished; every file still fits its target and decodes."""

import pytest
from click.testing import CliRunner

from tiny import photo
from tokcodec import resample
from tokcodec.cli import main
from tokcodec.errors import ArgumentError
from tokcodec.scalecontrol import predicted_scale


def no_polish(*args, **kwargs):
    raise AssertionError("the fast effort must not polish")


def test_fast_effort_codes_the_predicted_scale_without_a_search_or_polish(codec, monkeypatch):
    img = photo(256, 192, seed=7)
    budget = 60  # 0.0098 bpp: the full effort searches scales here
    monkeypatch.setattr(codec, "polish", no_polish)
    p = codec.prepare(img, effort="fast")
    r = codec.encode_prepared(p, budget)
    assert len(r.data) <= budget and "trials" not in p
    assert r.coded_size == resample.coded_size((256, 192), predicted_scale(8 * budget / (256 * 192)))
    assert codec.decode(r.data).size == (256, 192)


def test_fast_effort_makes_one_correction_file(codec, monkeypatch):
    """`measured` ranks several correction files; with one file there is nothing to rank, so
    the fast effort never decodes a second candidate."""
    from tokcodec import ratecontrol
    made = []
    real = ratecontrol.with_correction

    def counting(data, corr):
        made.append(corr)
        return real(data, corr)
    monkeypatch.setattr(ratecontrol, "with_correction", counting)
    img = photo(256, 192, seed=8)
    monkeypatch.setattr(codec, "polish", no_polish)
    r = codec.encode(img, nbytes=200, scale=1.0, effort="fast")
    fast_files = len(made)
    made.clear()
    monkeypatch.undo()
    monkeypatch.setattr(ratecontrol, "with_correction", counting)
    full = codec.encode(img, nbytes=200, scale=1.0)
    assert len(r.data) <= 200 and len(full.data) <= 200
    assert fast_files < len(made)


def test_fast_effort_steps_down_to_a_scale_that_fits(codec):
    """Where the predicted scale's smallest file is over the budget, smaller copies are tried."""
    from tokcodec.ratecontrol import TargetError
    img = photo(320, 224, seed=6)
    with pytest.raises(TargetError) as e:
        codec.encode(img, nbytes=40, scale=1.0)
    budget = len(e.value.smallest.data) - 1
    r = codec.encode(img, nbytes=budget, effort="fast")
    assert len(r.data) <= budget and r.coded_size is not None
    assert codec.decode(r.data).size == (320, 224)


def test_unknown_effort_is_refused(codec):
    with pytest.raises(ArgumentError, match="effort must be one of 'full', 'fast'"):
        codec.encode(photo(64, 48), 0.03, effort="quick")


def test_cli_effort_option(tmp_path, tiny_weights):
    src = tmp_path / "a.png"
    photo(200, 130, seed=4).save(src)
    run = CliRunner().invoke
    res = run(main, ["encode", str(src), str(tmp_path / "a.tkc"), "--bytes", "300", "--effort", "fast",
                     "--weights", str(tiny_weights)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "a.tkc").stat().st_size <= 300
    res = run(main, ["decode", str(tmp_path / "a.tkc"), str(tmp_path / "b.png"), "--weights", str(tiny_weights)])
    assert res.exit_code == 0, res.output
    res = run(main, ["encode", str(src), str(tmp_path / "c.tkc"), "--effort", "quick"])
    assert res.exit_code == 2 and "--effort" in res.output and not (tmp_path / "c.tkc").exists()


def test_effort_in_the_python_api_and_the_pillow_plugin(tiny_weights, tmp_path, monkeypatch):
    import tokcodec
    import tokcodec.pillow  # noqa: F401 (registers .tkc)
    from tokcodec.codec import Codec
    seen = []
    real = Codec.encode

    def spy(self, *args, **kwargs):
        import inspect
        seen.append(inspect.signature(real).bind(self, *args, **kwargs).arguments.get("effort"))
        return real(self, *args, **kwargs)
    monkeypatch.setattr(Codec, "encode", spy)
    img = photo(96, 64, seed=2)
    data = tokcodec.encode(img, nbytes=120, effort="fast", weights=str(tiny_weights))
    assert len(data) <= 120
    img.save(tmp_path / "a.tkc", bytes=120, effort="fast", weights=str(tiny_weights))
    assert (tmp_path / "a.tkc").stat().st_size <= 120
    assert seen == ["fast", "fast"]
    with pytest.raises(ArgumentError, match="effort"):
        tokcodec.encode(img, nbytes=120, effort="slow", weights=str(tiny_weights))
