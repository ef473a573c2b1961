"""relaydiff.compare: NFE matching, each method's sampler making the planned network calls, budgets,
and the `--smoke` run end to end (results.md, results.json, one grid per method, reuse on rerun)."""

from __future__ import annotations

import json
import os

import PIL.Image
import pytest
import torch

from relaydiff import compare, sampling
from relaydiff.compare.methods import METHODS, UNITS, build_unit, match_nfe, sample_method, unit_budget
from relaydiff.compare.single_stage import heun_nfe

CFG = dict(resolution=16, k=4, channels=8, channel_mult_low=(1, 2), channel_mult_high=(1, 2), attn_res=(),
           num_blocks=1, aug_max=1.0, low_fraction=0.5, block_scale=0.15, cond_sigma=0.2, budget_kimg=1.0,
           budget_minutes=0.0, batch=4)


@pytest.mark.parametrize("target", [5, 12, 35, 60])
def test_match_nfe_is_nearest_and_adds_up(target):
    for method in METHODS:
        plan = match_nfe(method, target, CFG)
        assert plan["nfe"] == plan["low_nfe"] + plan["high_nfe"]
        assert abs(plan["nfe"] - target) <= 1, (method, plan)
        if method == "relay":
            assert plan["high_nfe"] == sampling.relay_nfe(plan["high_steps"])
        else:
            assert plan["high_nfe"] == heun_nfe(plan["high_steps"])
        if method in ("single", "single_block"):
            assert plan["low_nfe"] == 0
        else:  # a cascade splits the evaluations about evenly between its stages
            assert plan["low_nfe"] >= 1 and abs(plan["low_nfe"] - target / 2) <= 2, (method, plan)
    assert match_nfe("single", 35, CFG)["high_steps"] == 18  # EDM's CIFAR setting: 18 steps, 35 NFE
    few_low = match_nfe("cdm_trunc", 35, CFG, low_share=0.2)
    assert few_low["nfe"] == 35 and abs(few_low["low_nfe"] - 7) <= 1
    with pytest.raises(ValueError):
        match_nfe("single", 0, CFG)


def test_every_sampler_makes_the_planned_calls(one_thread):
    torch.manual_seed(0)
    units = {name: build_unit(name, CFG)[0].eval() for name in UNIT_SET}
    for method in METHODS:
        plan = match_nfe(method, 5, CFG)
        x, calls = sample_method(method, {u: units[u] for u in UNITS[method]}, [3, 4], plan, CFG)
        assert x.shape == (2, 3, 16, 16) and torch.isfinite(x).all()
        assert calls == plan["nfe"], method
        # Per-image seeds: a sample does not depend on the batch it is drawn in.
        one, _ = sample_method(method, {u: units[u] for u in UNITS[method]}, [4], plan, CFG)
        torch.testing.assert_close(one, x[1:], rtol=1e-4, atol=1e-4)


UNIT_SET = sorted({u for units in UNITS.values() for u in units})


def test_budget_split():
    assert unit_budget("single", CFG) == (250, float("inf"))
    assert unit_budget("stage1", CFG)[0] == unit_budget("relay2", CFG)[0] == 125
    assert unit_budget("lowdiff", dict(CFG, budget_kimg=0.0, budget_minutes=2.0)) == (None, 120.0)
    assert unit_budget("cdm_sr", dict(CFG, low_fraction=0.25))[0] == 188


def test_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        compare.parse_args(["--methods", "single,ddpm"])
    assert "ddpm" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare.parse_args(["--budget-kimg", "0"])
    with pytest.raises(SystemExit):
        compare.parse_args(["--k", "3", "--resolution", "24"])


def test_smoke_end_to_end(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert compare.main(["--smoke", "--outdir", str(out), "--no-progress"]) == 0
    text = (out / "results.md").read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| ")][1:]
    assert [r.split("|")[1].strip() for r in rows] == ["data (other images)", *METHODS]
    saved = json.loads((out / "results.json").read_text())
    for row in saved["rows"]:
        assert row["nfe"] == row["steps"]["nfe"] and abs(row["nfe"] - 5) <= 1
        assert row["train_images"] > 0 and row["params"] > 0 and row["seconds_per_image"] > 0
        assert row["metrics"]["rapsd_distance"] >= 0 and row["metrics"]["swd"] >= 0
        with PIL.Image.open(out / f"grid-{row['method']}.png") as im:
            assert im.size[0] > 0
    assert "KID" not in text  # no --inception: no Inception metrics
    with PIL.Image.open(out / "grid-all.png") as im, PIL.Image.open(out / "grid-data.png") as data:
        assert im.size == (data.size[0], 96 * (1 + len(METHODS)))  # 16px tiles shown at 96px
    # A rerun with the same options reuses the trained units and finished rows: nothing rewritten.
    stamp = {name: os.stat(out / "units" / f"{name}.pt").st_mtime_ns for name in UNIT_SET}
    assert compare.main(["--smoke", "--outdir", str(out), "--no-progress", "--methods", "relay,single"]) == 0
    assert {name: os.stat(out / "units" / f"{name}.pt").st_mtime_ns for name in UNIT_SET} == stamp
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_inception_metrics_when_given(tmp_path, one_thread):
    from detector_files import write_random_detector  # a random-weight FID Inception-v3 state_dict

    path = write_random_detector(tmp_path / "detector.pth")
    g = torch.Generator().manual_seed(0)
    ref = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=g)
    same, plain = compare.score(ref, ref, path), compare.score(ref, ref)
    assert set(same) == {"rapsd_distance", "swd", "fid", "kid"} and set(plain) == {"rapsd_distance", "swd"}
    assert same["rapsd_distance"] == 0
    brighter = compare.score((ref.int() + 60).clamp(max=255).to(torch.uint8), ref, path)
    assert brighter["fid"] > 10 * abs(same["fid"]) + 0.01
    args = compare.parse_args(["--smoke", "--outdir", str(tmp_path), "--inception", path])
    steps = dict(low_steps=0, high_steps=3, low_nfe=0, high_nfe=5, nfe=5)
    row = dict(method="single", metrics=brighter, steps=steps, nfe=5, seconds_per_image=0.5, train_images=8,
               train_seconds=3.0, params=10)
    compare.write_results(args, [row], "cmd", None)
    table = (tmp_path / "results.md").read_text()
    assert "| KID | FID |" in table and f"{brighter['fid']:.1f}" in table
