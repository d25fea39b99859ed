"""The rules every printed number follows: n-rules, chance flags, collapsed runs, table loading."""
import json

import numpy as np

import pytest

from covidnetx.eval.metrics import confusion, from_confusion
from covidnetx.scaling.cells import cell_flags, final_rows, format_cell, load_table


def _run(acc, ba=None, lo=None, hi=None, k=3, collapsed=False):
    ba = acc if ba is None else ba
    return {"accuracy": acc, "accuracy_ci_lo": lo if lo is not None else acc - 0.05,
            "accuracy_ci_hi": hi if hi is not None else acc + 0.05, "balanced_accuracy": ba,
            "balanced_accuracy_ci_lo": ba - 0.05, "balanced_accuracy_ci_hi": ba + 0.05, "n_classes": k,
            "collapsed": collapsed}


def test_one_run_shows_its_test_interval_and_never_a_std():
    assert format_cell([_run(0.8, lo=0.72, hi=0.87)], "accuracy") == "80.0 [72.0–87.0] (n=1)"


def test_several_runs_show_mean_std_and_n():
    cell = [_run(0.8), _run(0.9), _run(0.85)]
    assert format_cell(cell, "accuracy") == "85.0 ± 5.0 (n=3)"


def test_chance_cells_are_flagged():
    # three classes: chance is 1/3; balanced accuracy 0.36 with test intervals of +-0.05 cannot be told from it
    cell = [_run(0.5, ba=0.36), _run(0.52, ba=0.37)]
    f = cell_flags(cell)
    assert f["chance"] is True and f["chance_level"] == pytest.approx(1 / 3)
    assert format_cell(cell, "accuracy").endswith("⚠ chance")
    assert cell_flags([_run(0.8), _run(0.82)])["chance"] is False
    assert cell_flags([{"accuracy": 0.5}])["chance"] is None          # the rows cannot tell: no flag


def test_collapsed_runs_are_shown_as_collapsed():
    import numpy as np
    cm = confusion(np.array([0, 0, 1, 2, 2]), np.array([0, 0, 0, 0, 0]), 3)
    m = from_confusion(cm, ["a", "b", "c"])
    assert m["collapsed"] is True and m["predicted_classes"] == 1 and m["n_classes"] == 3
    assert from_confusion(confusion(np.array([0, 1, 2]), np.array([0, 1, 1]), 3), ["a", "b", "c"])["collapsed"] is False
    cell = [_run(0.4, ba=1 / 3, collapsed=True), _run(0.4, ba=1 / 3, collapsed=True)]
    assert format_cell(cell, "accuracy") == "collapsed (n=2)"
    mixed = format_cell([_run(0.4, ba=1 / 3, collapsed=True), _run(0.9)], "accuracy")
    assert "1 collapsed" in mixed and "±" in mixed


def test_tables_load_from_jsonl_and_csv(tmp_path):
    j = tmp_path / "r.jsonl"
    j.write_text("\n".join(json.dumps(r) for r in [
        {"run_id": "a", "time": 1, "final": True, "accuracy": 0.5},
        {"run_id": "a", "time": 2, "final": True, "accuracy": 0.6},       # a rerun replaces the earlier row
        {"run_id": "b", "time": 1, "final": False, "accuracy": 0.1}]) + "\n")
    rows = final_rows(load_table(j))
    assert [(r["run_id"], r["accuracy"]) for r in rows] == [("a", 0.6)]
    c = tmp_path / "t.csv"
    c.write_text("width,acc,note\n8,0.5,x\n16,,y\n")
    assert load_table(c) == [{"width": 8, "acc": 0.5, "note": "x"}, {"width": 16, "acc": None, "note": "y"}]


def test_cells_count_checkpoints_not_few_shot_draws():
    """Five few-shot draws on each of two checkpoints: n = 2 units (each the mean of its draws), and the
    chance flag reads the units' spread, not the draws'."""
    from covidnetx.scaling.cells import summarise_units, units
    rows = []
    for ck, level in ((0, 0.4), (1, 0.7)):
        for d in range(5):
            v = level + 0.001 * d
            rows.append({**_run(v), "task": "transfer", "seed": d, "pretrain_seed": ck})
    us = units(rows, "accuracy")
    assert sorted(u["runs"] for u in us) == [5, 5]
    assert sorted(u["value"] for u in us) == pytest.approx([0.402, 0.702])
    s = summarise_units(rows, "accuracy")
    assert s["n"] == 2 and s["runs"] == 10 and s["std"] == pytest.approx(np.std([0.402, 0.702], ddof=1))
    assert format_cell(rows, "accuracy") == "55.2 ± 21.2 (n=2; 10 runs) ⚠ chance"
    # two checkpoints this far apart cannot be told from 1/3; ten draws treated as units would have been
    assert cell_flags(rows)["chance"] is True
    draws = [{k: v for k, v in r.items() if k not in ("task", "seed", "pretrain_seed")} for r in rows]
    assert len(units(draws, "accuracy")) == 10 and cell_flags(draws)["chance"] is False
    pre = [{**_run(0.8), "task": "pretrain", "seed": s, "pretrain_seed": None} for s in range(3)]
    assert format_cell(pre, "accuracy") == "80.0 ± 0.0 (n=3)"
