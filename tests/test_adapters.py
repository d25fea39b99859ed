import math

import numpy as np
import pytest

from covidnetx.data.hdf5 import PackedDataset
from covidnetx.utils import UserError
from data_tools.adapters import CHEXPERT_CLASSES, NIH_CLASSES, get_adapter, ieee8023_class
from tests import raw_layouts as L
from tests.conftest import run_cli, write_png


def _nan_eq(a, b):
    return all((math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(a, b))


def test_imagefolder_flat_and_split_layouts(tmp_path):
    rng = np.random.default_rng(0)
    for rel in ["flat/cat/1.png", "flat/cat/2.png", "flat/dog/1.png",
                "split/train/cat/1.png", "split/train/dog/1.png", "split/test/dog/2.png"]:
        write_png(tmp_path / rel, rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
    m = get_adapter("imagefolder")(tmp_path / "flat")
    assert m.class_names == ["cat", "dog"] and [r.label for r in m.rows] == ["cat", "cat", "dog"]
    assert all(r.split is None for r in m.rows)
    m = get_adapter("imagefolder")(tmp_path / "split")
    assert [(r.split, r.label) for r in m.rows] == [("test", "dog"), ("train", "cat"), ("train", "dog")]


def test_csv_reads_cxr_small_layout(cxr_small):
    m = get_adapter("csv")(cxr_small)
    assert len(m.rows) == 265
    assert m.class_names == ["COVID-19", "normal", "pneumonia"]
    counts = {c: sum(r.label == c for r in m.rows) for c in m.class_names}
    assert counts == {"COVID-19": 194, "normal": 12, "pneumonia": 59}
    assert len({r.patient_id for r in m.rows}) == 146
    assert all(r.view in ("PA", "AP", "AP Supine") for r in m.rows)


def test_chexpert_policies_and_frontal_filter(tmp_path):
    base = L.make_chexpert(tmp_path)
    m = get_adapter("chexpert")(base, uncertain="ignore")
    assert len(m.rows) == 4                      # the lateral view is dropped
    assert m.class_names == CHEXPERT_CLASSES and m.label_kind == "multilabel"
    r0 = m.rows[0]
    assert r0.patient_id == "patient00001" and r0.split == "train" and r0.view == "AP"
    assert r0.path == "train/patient00001/study1/view1_frontal.jpg"   # resolved below the root
    atel = CHEXPERT_CLASSES.index("Atelectasis")
    assert math.isnan(r0.label[atel]) and r0.label[CHEXPERT_CLASSES.index("Lung Opacity")] == 1.0
    assert math.isnan(r0.label[0])                # blank -> unknown
    assert get_adapter("chexpert")(base, uncertain="ones").rows[0].label[atel] == 1.0
    assert get_adapter("chexpert")(base, uncertain="zeros").rows[0].label[atel] == 0.0
    assert get_adapter("chexpert")(base, blank="zeros").rows[0].label[0] == 0.0
    assert [r.split for r in m.rows].count("val") == 1
    assert len(get_adapter("chexpert")(base, frontal_only=False).rows) == 5


def test_chexpert_packs_with_nan_labels(tmp_path):
    base = L.make_chexpert(tmp_path)
    run_cli("pack", "chexpert", base, tmp_path / "out", "--size", "16", "--no-progress")
    ds = PackedDataset(tmp_path / "out", "train")
    assert ds.labels.shape == (3, 14) and ds.labels.dtype == np.float32
    assert np.isnan(ds.labels).sum() > 0
    m = get_adapter("chexpert")(base)
    assert _nan_eq(ds.labels[0], m.rows[0].label)
    assert ds.read_image(0).shape == (16, 16, 1)
    assert run_cli("verify", tmp_path / "out").returncode == 0


def test_chexpert_bad_value_names_row_and_column(tmp_path):
    base = L.make_chexpert(tmp_path)
    text = (base / "train.csv").read_text().splitlines()
    text[1] = text[1].replace(",1.0,", ",yes,", 1)
    (base / "train.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(UserError, match=r"train\.csv:2: column 'Lung Opacity': value 'yes'"):
        get_adapter("chexpert")(base)


def test_nih_findings_lists_and_images_subfolders(tmp_path):
    root = L.make_nih(tmp_path)
    m = get_adapter("nih")(root)
    assert len(m.rows) == 4                       # LL view dropped
    by = {r.path.split("/")[-1]: r for r in m.rows}
    r = by["00000001_001.png"]
    assert r.path == "images_001/images/00000001_001.png" and r.split == "train" and r.patient_id == "nih-1"
    assert [c for c, v in zip(NIH_CLASSES, r.label) if v == 1.0] == ["Cardiomegaly", "Emphysema"]
    assert sum(by["00000002_000.png"].label) == 0 and by["00000002_000.png"].split == "test"
    assert by["00000003_000.png"].path.startswith("images_002/")
    run_cli("pack", "nih", root, tmp_path / "out", "--no-progress")
    assert run_cli("verify", tmp_path / "out").returncode == 0


def test_nih_unknown_finding_is_an_error(tmp_path):
    root = L.make_nih(tmp_path)
    p = root / "Data_Entry_2017.csv"
    p.write_text(p.read_text().replace("Hernia|Infiltration", "Hernia|Dragons"))
    r = run_cli("pack", "nih", root, tmp_path / "out", "--no-progress", check=False)
    assert r.returncode == 2
    assert "Data_Entry_2017.csv:5: unknown finding 'Dragons'" in r.stderr
    assert not (tmp_path / "out" / "index.json").exists()


def test_mimic_joins_labels_metadata_and_split(tmp_path):
    root = L.make_mimic(tmp_path)
    m = get_adapter("mimic")(root)
    assert len(m.rows) == 3                       # lateral dropped
    r = m.rows[0]
    assert r.path == "files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg"
    assert r.patient_id == "mimic-10000032" and r.split == "train"
    assert r.label[CHEXPERT_CLASSES.index("Atelectasis")] == 1.0
    assert math.isnan(r.label[CHEXPERT_CLASSES.index("Edema")])       # -1 under U-ignore
    assert [x.split for x in m.rows] == ["train", "val", "test"]
    assert get_adapter("mimic")(root, uncertain="ones").rows[2].label[CHEXPERT_CLASSES.index("Pneumonia")] == 1.0
    run_cli("pack", "mimic", root, tmp_path / "out", "--no-progress")
    assert run_cli("verify", tmp_path / "out").returncode == 0


def test_padchest_16bit_is_rescaled_in_the_packer(tmp_path):
    from PIL import Image
    root = L.make_padchest(tmp_path)
    m = get_adapter("padchest")(root)
    assert len(m.rows) == 3                       # lateral (L) dropped
    assert m.class_names == ["chronic changes", "copd signs", "normal", "pneumonia"]
    assert m.rows[1].label == [1.0, 0.0, 0.0, 1.0] and m.rows[1].path.startswith("0/")
    run_cli("pack", "padchest", root, tmp_path / "out", "--encoding", "raw", "--splits", "1,0,0",
            "--no-progress")
    ds = PackedDataset(tmp_path / "out", "train")
    assert len(ds) == 3
    for i in range(3):
        img = ds.read_image(i)
        with Image.open(root / ds.paths[i]) as im:
            assert im.mode.startswith("I")                       # really 16-bit on disk
            src = np.asarray(im, dtype=np.float64)
        expect = np.rint((src - src.min()) * 255.0 / (src.max() - src.min()))
        assert img.dtype == np.uint8 and img.max() == 255 and img.min() == 0
        assert np.array_equal(img[:, :, 0], expect.astype(np.uint8))


def test_padchest_bad_label_literal(tmp_path):
    root = L.make_padchest(tmp_path)
    p = root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
    p.write_text(p.read_text().replace("['normal']", "['normal'", 1))
    with pytest.raises(UserError, match=r"\.csv:2: column 'Labels'"):
        get_adapter("padchest")(root)


def test_covidx_split_files(tmp_path):
    root = L.make_covidx(tmp_path)
    m = get_adapter("covidx")(root)
    assert m.class_names == ["negative", "positive"]
    assert [r.split for r in m.rows] == ["train"] * 4 + ["test"] * 2
    assert m.rows[0].patient_id == "rsna-419639-003251" and m.rows[0].path.startswith("train/")
    assert m.rows[1].source == "cohen"
    run_cli("pack", "covidx", root, tmp_path / "out", "--no-progress")
    assert run_cli("verify", tmp_path / "out").returncode == 0


def test_covidx_malformed_line_and_unknown_label(tmp_path):
    root = L.make_covidx(tmp_path)
    (root / "test_COVIDx9A.txt").write_text("7b1e0e6e 7b1e0e6e.png\n")
    with pytest.raises(UserError, match=r"test_COVIDx9A\.txt:1: malformed line"):
        get_adapter("covidx")(root)
    (root / "test_COVIDx9A.txt").write_text("7b1e0e6e 7b1e0e6e.png maybe rsna\n")
    with pytest.raises(UserError, match=r"test_COVIDx9A\.txt:1: unknown label 'maybe'"):
        get_adapter("covidx")(root).check()


def test_ieee8023_metadata(tmp_path):
    root = L.make_ieee8023(tmp_path)
    m = get_adapter("ieee8023")(root)
    assert [(r.label, r.patient_id) for r in m.rows] == [
        ("COVID-19", "ieee8023-2"), ("COVID-19", "ieee8023-2"), ("pneumonia", "ieee8023-5"),
        ("normal", "ieee8023-6"), ("pneumonia", "ieee8023-10")]
    assert m.notes["dropped"] == {"not frontal": 1, "not X-ray": 1, "finding ARDS": 1}
    assert m.class_names == ["normal", "pneumonia", "COVID-19"]
    assert ieee8023_class("COVID-19, ARDS") == "COVID-19" and ieee8023_class("todo") is None
