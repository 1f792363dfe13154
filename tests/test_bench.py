"""The benchmark's speed section: tokc's times beside the reference measured in the same run."""

from pathlib import Path

from tokcodec import bench


def test_speed_lines_give_ratios_to_the_reference():
    row = {"image": "kodim01", "size": [768, 512], "setting": "K=256 entire q=0.00", "bytes": 1463, "runs": 3,
           "encode_s": 3.2, "decode_s": 0.45, "load_s": 1.0, "encode_peak_mb": 629, "decode_peak_mb": 496,
           "threads": 2, "vvc": {"encode_s": 0.08, "decode_s": 0.015, "bytes": 1038}}
    lines = bench.speed_lines([row, {**row, "image": "other", "vvc": None}],
                              [{"effort": "full", "images": 24, "seconds": 69.0, "per_min": 20.9}])
    text = "\n".join(lines)
    assert "| kodim01 | 1038 | 0.08 | 0.01 | 40.0 | 30.0 |" in text  # ratios tokc / VVenC, tokc / VVdeC
    assert "| other | 768x512 |" in text and "| other | 1038" not in text  # no reference row without VVC
    assert "| full | 24 | 69 | 20.9 |" in text and "Issue 15's bars" in text
    assert bench.speed_lines([], []) == []


def test_reference_is_skipped_without_vvc(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "find_vvc", lambda: None)
    assert bench.vvc_speed(Path(tmp_path / "none.png"), 2) is None
