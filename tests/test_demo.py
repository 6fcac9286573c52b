"""`flat demo` end to end on tiny data with a tiny model (the real demo takes minutes; see README)."""
import json

import pytest

from flat.demo import format_table, run_demo
from flat.inference import load_model
from tests.fastmri_files import make_tiny_splits


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    return make_tiny_splits(tmp_path_factory.mktemp("demodata"), seed=10, test_vols=2)


def test_demo_smoke(demo_data, tmp_path):
    out = tmp_path / "demo"
    res = run_demo(out, data=str(demo_data), steps=3, preset="tiny", overrides=["train.threads=1"],
                   progress=False, echo=False)
    for f in ("flat.pt", "unrolled.pt", "recon_panel.png", "psnr_per_cascade.png", "results.json"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert load_model(out / "flat.pt").cfg.mode == "flat"
    assert load_model(out / "unrolled.pt").cfg.mode == "vanilla"
    assert set(res["methods"]) == {"zero-filled", "CG-SENSE", "vanilla unrolled", "FLAT"}
    for m in res["methods"].values():
        assert m["PSNR"] > 10 and 0 < m["SSIM"] <= 1 and m["NMSE"] > 0 and m["seconds"] >= 0
    assert len(res["cascade"]["FLAT"]) == 4  # x_0 .. x_3 of the tiny preset
    table = format_table(res)
    assert "FLAT" in table and "CG-SENSE" in table and "PSNR per cascade" in table
    saved = json.loads((out / "results.json").read_text())
    assert saved["methods"]["FLAT"]["PSNR"] == pytest.approx(res["methods"]["FLAT"]["PSNR"])
    assert (out / "recon_panel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_cli_rejects_bad_arguments(tmp_path):
    from flat.cli import main

    assert main(["demo", "--out", str(tmp_path / "x"), "--data", str(tmp_path / "nowhere"), "--steps", "2"]) == 1
    assert main(["demo", "--out", str(tmp_path / "x"), "--steps", "0"]) == 1
