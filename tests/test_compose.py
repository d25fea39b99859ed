import numpy as np
import pytest

from covidnetx.data.compose import Mixture, few_shot, fraction_subset, merge_class_names
from covidnetx.data.hdf5 import PackedDataset
from covidnetx.utils import UserError
from tests.conftest import run_cli, write_png


def test_merge_class_names():
    assert merge_class_names([["a", "b"], ["c", "b"]], "union") == ["a", "b", "c"]
    assert merge_class_names([["a", "b", "c"], ["c", "b"]], "intersection") == ["b", "c"]
    with pytest.raises(UserError, match="share no class"):
        merge_class_names([["a"], ["b"]], "intersection")
    # a rename that gives two classes of one dataset the same name merges them: one name, once
    assert merge_class_names([["a", "b", "b"], ["c"]], "union") == ["a", "b", "c"]
    assert merge_class_names([["b", "a", "b"], ["b", "a"]], "intersection") == ["b", "a"]


def test_fractions_are_nested_stratified_and_seeded():
    labels = np.repeat(np.arange(3), [100, 50, 10])
    s10, s25, s50 = (fraction_subset(labels, f, seed=3) for f in (0.1, 0.25, 0.5))
    assert set(s10) <= set(s25) <= set(s50)
    assert [int((labels[s25] == c).sum()) for c in range(3)] == [25, 12, 2]   # round(0.25*n) per class
    assert np.array_equal(s25, fraction_subset(labels, 0.25, seed=3))
    assert not np.array_equal(s25, fraction_subset(labels, 0.25, seed=4))
    assert len(fraction_subset(labels, 1.0, 0)) == 160
    with pytest.raises(UserError):
        fraction_subset(labels, 0.0, 0)


def test_few_shot_reproducible_and_checked():
    labels = np.repeat(np.arange(3), [20, 7, 5])
    a = few_shot(labels, ["x", "y", "z"], 5, seed=0)
    assert np.array_equal(a, few_shot(labels, ["x", "y", "z"], 5, seed=0))
    assert not np.array_equal(a, few_shot(labels, ["x", "y", "z"], 5, seed=1))
    assert [int((labels[a] == c).sum()) for c in range(3)] == [5, 5, 5]
    with pytest.raises(UserError, match=r"k=6: class 'z' has only 5 example\(s\)"):
        few_shot(labels, ["x", "y", "z"], 6, seed=0)


def _pack(tmp_path, name, classes, n_each):
    rng = np.random.default_rng(len(name))
    raw = tmp_path / f"raw-{name}"
    for c in classes:
        for i in range(n_each):
            write_png(raw / c / f"{i}.png", rng.integers(0, 255, (6, 6), dtype=np.uint8))
    run_cli("pack", "imagefolder", raw, tmp_path / name, "--splits", "1,0,0", "--no-progress")
    return PackedDataset(tmp_path / name, "train")


def test_mixture_union_intersection_and_fraction(tmp_path):
    a = _pack(tmp_path, "a", ["cat", "dog", "normal"], 4)
    b = _pack(tmp_path, "b", ["No Finding", "pneumonia"], 3)
    u = Mixture([a, b], "union", rename={"No Finding": "normal"})
    assert u.class_names == ["cat", "dog", "normal", "pneumonia"]
    assert len(u) == 18
    assert [int((u.labels == i).sum()) for i in range(4)] == [4, 4, 7, 3]
    # a remapped label points at the right image: pneumonia items come from part b's pneumonia images
    for i in np.flatnonzero(u.labels == 3):
        part, j = u.items[i]
        assert part == 1 and b.class_names[b.labels[j]] == "pneumonia"
        assert np.array_equal(u.read_image(int(i)), b.read_image(int(j)))
    inter = Mixture([a, b], "intersection", rename={"No Finding": "normal"})
    assert inter.class_names == ["normal"] and len(inter) == 7 and set(inter.labels) == {0}
    merged = Mixture([a], "union", rename={"cat": "animal", "dog": "animal"})     # two classes of a into one
    assert merged.class_names == ["animal", "normal"] and [int((merged.labels == i).sum()) for i in (0, 1)] == [8, 4]
    half = Mixture([a, b], "union", fraction=0.5, seed=0, rename={"No Finding": "normal"})
    assert len(half) == 2 + 2 + 4 + 2     # round(0.5 * n) per class: 4->2, 4->2, 7->4 (banker's: 3.5->4), 3->2


def test_inspect_cli_prints_selection(tmp_path):
    _pack(tmp_path, "a", ["x", "y"], 6)
    r = run_cli("inspect", tmp_path / "a", "--shots", "3", "--seed", "2")
    assert "few-shot k=3 seed=2: 6 images" in r.stdout and "per class: x 3, y 3" in r.stdout
    r = run_cli("inspect", tmp_path / "a", "--shots", "7", check=False)
    assert r.returncode == 2 and "class 'x' has only 6 example(s)" in r.stderr
