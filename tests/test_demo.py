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


@pytest.mark.parametrize("affinity, env, main, layout", [
    ({0, 1}, {}, 2, (2, 1)),                        # the 2-core machine: two 1-thread processes
    ({0}, {}, 1, (1, 1)),                           # taskset -c 0: one after the other
    (set(range(8)), {}, 8, (2, 4)),
    ({0, 1, 2}, {}, 3, (2, 1)),                     # an odd core is left to the main process
    (set(range(8)), {"OMP_NUM_THREADS": "1"}, 1, (2, 1)),
    (set(range(8)), {"OMP_NUM_THREADS": "3,2"}, 3, (2, 3)),
    ({0, 1}, {"OMP_NUM_THREADS": "16"}, 2, (2, 1)),  # OMP above the cores: the cores win
    ({0, 1}, {"OMP_NUM_THREADS": "junk"}, 2, (2, 1)),  # invalid: ignored, as OpenMP does
])
def test_threads_fit_the_allowed_cores(affinity, env, main, layout):
    from flat.demo import training_processes, usable_threads

    assert usable_threads(affinity, env) == main
    assert training_processes(affinity, env) == layout


def test_train_progress_reads_each_log(tmp_path):
    from flat.demo import TrainProgress

    runs = {"FLAT": tmp_path / "flat", "vanilla unrolled": tmp_path / "unrolled"}
    for d in runs.values():
        d.mkdir()
    old = "2026-01-01 00:00:00 step 900/1000 epoch 3 lr 1e-3 ssim 0.1 l1 0.1 loss 9.9\n"
    (runs["FLAT"] / "train.log").write_text(old)  # an earlier run's lines: not this run's progress
    mon = TrainProgress(runs, steps=1000, time_limit_s=100.0, enabled=False)

    def log(name, step, loss):
        with open(runs[name] / "train.log", "a") as f:
            f.write(f"2026-01-01 00:00:01 step {step}/1000 epoch 0 lr 1.00e-03 ssim 0.2 l1 0.1 loss {loss}\n")

    s = mon.poll(now=0.0)
    assert s["FLAT"]["step"] == 0 and s["FLAT"]["eta_s"] is None
    log("FLAT", 10, "0.5000")
    log("vanilla unrolled", 10, "0.6000")
    mon.poll(now=10.0)
    log("FLAT", 30, "0.4000")  # 20 steps in 10 s: 2 steps/s
    log("vanilla unrolled", 15, "0.5500")  # 5 steps in 10 s: 0.5 steps/s
    s = mon.poll(now=20.0)
    assert (s["FLAT"]["step"], s["FLAT"]["loss"]) == (30, "0.4000")
    # FLAT: 970 steps at 2/s = 485 s, but the 100 s cap leaves 100 - 30/2 = 85 s
    assert s["FLAT"]["eta_s"] == pytest.approx(85.0)
    # vanilla: the cap is already spent at its rate (15 steps / 0.5 per s = 30 s; 70 s left)
    assert s["vanilla unrolled"]["eta_s"] == pytest.approx(70.0)
    with open(runs["FLAT"] / "train.log", "a") as f:
        f.write("2026-01-01 00:01:40 time limit train.time_limit_s=100 reached at step 200\n")
        f.write("2026-01-01 00:01:41 step 201/10")  # half a line: read on a later poll
    s = mon.poll(now=30.0)
    assert s["FLAT"]["note"].startswith("time cap") and s["FLAT"]["step"] == 200
    with open(runs["vanilla unrolled"] / "train.log", "a") as f:
        f.write("2026-01-01 00:01:50 done: 17 steps in 34.0 s; weights in x/model.pt\n")
    s = mon.poll(now=40.0)
    assert (s["vanilla unrolled"]["step"], s["vanilla unrolled"]["note"]) == (17, "done")
    mon.close()


def test_demo_says_when_the_cap_stops_training_and_panel_psnr_is_the_slice(demo_data, tmp_path, capsys,
                                                                          monkeypatch):
    import h5py
    import numpy as np

    import flat.demo as demo
    from flat.plots import recon_panel

    seen = {}

    def spy(path, target, recons, scores=None, title=None, **kw):
        seen.update(target=np.asarray(target), recons=dict(recons), scores=dict(scores), title=title)
        recon_panel(path, target, recons, scores, title, **kw)

    monkeypatch.setattr(demo, "recon_panel", spy)
    monkeypatch.setattr(demo, "training_processes", lambda: (1, 1))  # in this process: no spawn cost
    out = tmp_path / "demo"
    res = demo.run_demo(out, data=str(demo_data), steps=50, time_limit_s=1e-3, preset="tiny",
                        progress=False, echo=True)
    printed = capsys.readouterr().out
    for name in ("FLAT", "vanilla unrolled"):
        assert res["train"][name][1] == 1  # one step outlasts 1 ms
        assert f"{name}: the 0.001 s time cap stopped training at step 1 of 50" in printed
    assert res["time_capped"] == {"FLAT": True, "vanilla unrolled": True}
    assert "stopped by the time cap" in format_table(res)

    # the panel: each caption is the PSNR of that slice, computed here from the file's own target
    fname, s = res["panel"]["slice"].rsplit(" slice ", 1)
    with h5py.File(demo_data / "test" / fname, "r") as f:
        target = np.asarray(f["reconstruction_rss"][int(s)], dtype=np.float64)
        maxval = float(f.attrs["max"])
    np.testing.assert_array_equal(seen["target"], target.astype(np.float32))
    assert set(seen["recons"]) == {"zero-filled", "CG-SENSE", "vanilla unrolled (1 step)", "FLAT (1 step)"}
    for label, img in seen["recons"].items():
        mse = np.mean((target - np.asarray(img, dtype=np.float64)) ** 2)
        mine = 10 * np.log10(maxval ** 2 / mse)
        name = label.split(" (")[0]
        assert res["panel"]["PSNR"][name] == pytest.approx(mine, abs=1e-6)
        assert seen["scores"][label] == f"{mine:.2f} dB (this slice)"
        # the test-set mean is stated apart, in the title
        assert f"{name} {res['methods'][name]['PSNR']:.2f}" in seen["title"]
    assert "test-set mean" in seen["title"]
