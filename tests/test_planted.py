"""The generator's planted transfer structure, recovered end to end: generated data -> packing ->
pre-training -> linear probes -> the report's statistics. The X-ray-like source's classes are built from
the primitives that separate the target's classes (``xray_alignment=1``), the natural-like source's from
unrelated shapes, so pre-training on the X-ray-like source must transfer better, and more of it better.
Each generator seed is one independent replicate of the whole pipeline; the truth must be recovered for
at least 4 of 5 (a known answer, not a threshold tuned to one run)."""
import copy
import math

import pytest

from covidnetx.scaling import cells as T
from covidnetx.scaling.report import paired_domain_differences


def _shrunk(preset: dict, seed: int) -> dict:
    p = copy.deepcopy(preset)
    p["generate"].update(per_class=80, xray_per_class=100, target_per_class=150, seed=seed)
    p.update(models=["resnet_w8"], data_models=["resnet_w8"], sizes=[20, 300], seeds=[0], steps=100, shots=[5],
             fewshot_seeds=[0], scratch=[], regimes=["linear"], scratch_regimes=[])
    return p


def test_planted_transfer_ordering_is_recovered(tmp_path, monkeypatch):
    from covidnetx import study
    from covidnetx.results import load_results
    base = study.PRESETS["demo"]
    assert base["generate"]["xray_alignment"] == 1.0          # the demo plants the structure this test checks
    outcomes = []
    for g in range(5):
        monkeypatch.setitem(study.PRESETS, "demo", _shrunk(base, g))
        out = tmp_path / f"gen{g}"
        args = study.build_parser().parse_args(["--preset", "demo", "--out", str(out), "--np", "1"])
        assert study.run(args) == 0
        rows = T.final_rows(load_results(out / "study" / "results.jsonl"))
        [d] = [d for d in paired_domain_differences(rows, "balanced_accuracy") if d["regime"] == "linear"]
        assert d["all"]["n"] == 2                                  # 2 sizes x 1 pre-training seed
        probe = {r.pretrain_train_size: r.balanced_accuracy for r in rows
                 if r.task == "transfer" and r.source == "xray" and r.regime == "linear"}
        small, large = probe[min(probe)], probe[max(probe)]
        outcomes.append((round(d["all"]["mean"], 3), round(small, 3), round(large, 3)))
    print("planted recovery (intra - inter, X-ray probe at the smallest and largest size):", outcomes)
    recovered = [m > 0 and large > small for m, small, large in outcomes]
    assert sum(recovered) >= 4, outcomes
    assert all(math.isfinite(m) for m, _, _ in outcomes)
