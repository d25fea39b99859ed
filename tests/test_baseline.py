"""`covidnetx baseline`'s table: covidnetx's runs beside MedMNIST v2's published PneumoniaMNIST rows, with
the verdict computed from the numbers (the run itself is exercised, shrunk, by the real-study test)."""
from covidnetx.baseline import PUBLISHED, table


def _row(auc, acc, seed=0):
    return {"auc": auc, "auc_ci_lo": auc - 0.01, "auc_ci_hi": auc + 0.01, "accuracy": acc,
            "accuracy_ci_lo": acc - 0.02, "accuracy_ci_hi": acc + 0.02, "n": 624, "seed": seed}


def test_one_run_prints_its_interval_beside_every_published_row():
    md = table([_row(0.95, 0.86)], "resnet_w64", 28, 10)
    assert "| covidnetx: resnet_w64 from scratch, 10 epochs | 28 px | 0.950 [0.940–0.960] (n=1) | 0.860 [0.840–0.880] (n=1) |" in md
    for name, inp, auc, acc in PUBLISHED:
        assert f"| {name} | {inp} | {auc:.3f} | {acc:.3f} |" in md
    assert "is inside the published range (0.942–0.991); it reproduces the published baseline" in md
    assert "Test images: 624" in md


def test_several_seeds_give_mean_sd_and_a_shortfall_is_said():
    md = table([_row(0.90, 0.80, 0), _row(0.88, 0.78, 1)], "resnet_w64", 28, 10)
    assert "0.890 ± 0.014 (n=2 seeds;" in md
    assert "is below the published range" in md and "falls short of the published baseline (AUC < 0.92)" in md
    assert "above the published range" in table([_row(0.995, 0.95)], "m", 32, 1)
