"""relaydiff.compare is a function of its options: two runs, whatever state torch's default generator
is in (torch 2.x seeds it randomly per process), and a run resumed after an interruption (some units
already saved, the rest trained later in another order) give bit-identical units and tables."""

import json

import torch

from relaydiff import compare

ARGS = ["--smoke", "--no-progress", "--methods", "single,relay"]
UNITS = ("single", "stage1", "relay2")


def _run(out, *extra):
    assert compare.main([*ARGS, "--outdir", str(out), *extra]) == 0


def _units(out):
    return {u: torch.load(out / "units" / f"{u}.pt", weights_only=True) for u in UNITS}


def _table(out):
    """results.json rows without the wall-clock fields (the only things allowed to differ)."""
    rows = json.loads((out / "results.json").read_text())["rows"]
    return [{k: v for k, v in row.items() if "seconds" not in k} for row in rows]


def _assert_same_units(a, b):
    for name in UNITS:
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f"{name}.{key}"


def test_two_runs_and_a_resumed_run_are_bit_identical(tmp_path, one_thread):
    torch.manual_seed(1)
    _run(tmp_path / "a")
    torch.manual_seed(2)  # another default-generator state, as a fresh process has
    _run(tmp_path / "b")
    first = _units(tmp_path / "a")
    _assert_same_units(first, _units(tmp_path / "b"))
    assert _table(tmp_path / "a") == _table(tmp_path / "b")
    assert (tmp_path / "a" / "results.md").read_text().count("|") > 10
    # Interrupted after the relay units were saved: the rerun trains `single` after other work.
    torch.manual_seed(3)
    assert compare.main(["--smoke", "--no-progress", "--methods", "relay", "--outdir", str(tmp_path / "c")]) == 0
    torch.manual_seed(4)
    _run(tmp_path / "c")
    _assert_same_units(first, _units(tmp_path / "c"))
    assert _table(tmp_path / "c") == _table(tmp_path / "a")
    # The seed matters: another --seed gives other weights.
    _run(tmp_path / "d", "--seed", "1")
    other = _units(tmp_path / "d")["single"]
    assert any(not torch.equal(first["single"][key], other[key]) for key in other)
