"""`tagloop demo`: the whole loop offline on tiny models."""

import json
from pathlib import Path

from click.testing import CliRunner

from tagloop.cli import main
from tagloop.generator.infotext import read_image_metadata


def test_demo_runs_the_loop(tmp_path):
    out = tmp_path / "demo"
    r = CliRunner().invoke(main, ["demo", "--out", str(out), "--variants", "2"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["source"]["complexity"] in ("simple", "medium", "complex")
    assert report["prompt"]["positive"].startswith("masterpiece")
    assert len(report["variants"]) == 2
    seeds = [v["seed"] for v in report["variants"]]
    assert seeds == [1234, 1235]
    for v in report["variants"]:
        meta = read_image_metadata(Path(v["path"]))
        assert meta.parameters["Seed"] in ("1234", "1235", 1234, 1235)
        assert "Negative prompt" in meta.parameters
        assert 0.0 <= v["jaccard"] <= 1.0
    # second run reuses the built models and continues the A1111 file counter
    r = CliRunner().invoke(main, ["demo", "--out", str(out), "--variants", "1"], catch_exceptions=False)
    assert r.exit_code == 0
    assert (out / "variants" / "00002-1234.png").is_file()
