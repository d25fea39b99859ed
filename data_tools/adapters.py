"""One adapter per raw dataset layout. Each turns a raw root into a :class:`Manifest`.

Adapters only read metadata (CSV/text files, directory listings); images are read by the packer.
Every metadata problem is a :class:`UserError` naming ``file:line`` (and the column where it matters).
"""
from __future__ import annotations

import ast
import csv
import gzip
import io
import re
from pathlib import Path
from typing import Callable, Iterator, Optional

from covidnetx.utils import UserError, first_bad_utf8, require_file
from data_tools.manifest import Manifest, Row

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"}
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "validate": "val", "dev": "val", "test": "test", "testing": "test"}
CHEXPERT_CLASSES = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity",
                    "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
                    "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices"]
NIH_CLASSES = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
               "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
               "Hernia"]
COVIDX_CLASSES = ["normal", "pneumonia", "COVID-19"]
COVIDX_BINARY = ["negative", "positive"]
FRONTAL_VIEWS = {"PA", "AP", "AP SUPINE", "AP_HORIZONTAL", "AP HORIZONTAL", "AP ERECT", "FRONTAL"}
NAN = float("nan")

ADAPTERS: dict[str, Callable[..., Manifest]] = {}


def register(name: str):
    def deco(fn):
        ADAPTERS[name] = fn
        return fn
    return deco


def get_adapter(kind: str) -> Callable[..., Manifest]:
    if kind not in ADAPTERS:
        raise UserError(f"unknown dataset kind {kind!r}; known: {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[kind]


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------
def _open_text(path: Path):
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _first_bad_utf8(path: Path) -> tuple:
    """(line, column, byte) of the first byte sequence that is not UTF-8 (the text decoder reads in blocks
    and cannot say which line it was on)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return first_bad_utf8(f)


def _csv_rows(reader, path: Path):
    """(the physical line where the row starts, csv.reader's row) of each row (a quoted field may span
    lines); bytes that are not UTF-8 are an error naming the line."""
    while True:
        start = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except UnicodeDecodeError:
            line, col, byte = _first_bad_utf8(path)
            raise UserError(f"{path}:{line}: not UTF-8 text (byte 0x{byte:02x} at column {col})") from None
        except csv.Error as e:
            raise UserError(f"{path}:{start}: malformed CSV ({e})") from None
        yield start, values


def read_csv(path: Path, required: list[str]) -> Iterator[tuple[str, dict]]:
    """Yield (``file:line``, row dict). Missing columns, and a row whose number of fields differs from the
    header's (a missing or extra comma shifts every later column), are errors naming the line; only
    empty trailing fields past the last named column are tolerated (spreadsheet exports)."""
    require_file(path, "metadata file")
    with _open_text(path) as f:
        reader = csv.reader(f)
        rows = _csv_rows(reader, path)
        header = next(rows, (1, None))[1]
        if header is None:
            raise UserError(f"{path}: empty file")
        header = [h.strip() for h in header]
        dup = [h for h in header if h and header.count(h) > 1]
        if dup:
            raise UserError(f"{path}:1: column {dup[0]!r} appears twice in the header")
        missing = [c for c in required if c not in header]
        if missing:
            raise UserError(f"{path}:1: missing column(s) {', '.join(missing)} (header: {', '.join(header)})")
        pos = {c: header.index(c) for c in header if c}
        named = max(pos.values()) + 1          # unnamed trailing header columns (NIH's trailing comma) may be absent
        for line, values in rows:
            where = f"{path}:{line}"
            if not values or (len(values) == 1 and not values[0].strip()):
                continue
            if len(values) < named or any(v.strip() for v in values[named:]):
                raise UserError(f"{where}: malformed row: {len(values)} fields, the header has {len(header)} "
                                f"({', '.join(header)})")
            yield where, {c: values[i].strip() for c, i in pos.items()}


def _split_alias(value: str, where: str) -> Optional[str]:
    v = value.strip().lower()
    if not v:
        return None
    if v not in SPLIT_ALIASES:
        raise UserError(f"{where}: unknown split {value!r} (use train/val/test)")
    return SPLIT_ALIASES[v]


def _classes_from(labels, explicit: Optional[list]) -> list:
    if explicit:
        return list(explicit)
    return sorted(set(labels))


def _rename(label: str, label_map: Optional[dict]) -> str:
    return label_map.get(label, label) if label_map else label


def _uncertain_value(raw: str, where: str, column: str, uncertain: str, blank: str) -> float:
    s = raw.strip()
    if s == "":
        return 0.0 if blank == "zeros" else NAN
    try:
        v = float(s)
    except ValueError:
        raise UserError(f"{where}: column {column!r}: value {raw!r} is not 1, 0, -1 or blank") from None
    if v == 1.0:
        return 1.0
    if v == 0.0:
        return 0.0
    if v == -1.0:
        return {"ignore": NAN, "ones": 1.0, "zeros": 0.0}[uncertain]
    raise UserError(f"{where}: column {column!r}: value {raw!r} is not 1, 0, -1 or blank")


def _check_policy(uncertain: str, blank: str) -> None:
    if uncertain not in ("ignore", "ones", "zeros"):
        raise UserError(f"uncertain policy {uncertain!r}: use ignore (U-ignore), ones (U-ones) or zeros (U-zeros)")
    if blank not in ("ignore", "zeros"):
        raise UserError(f"blank policy {blank!r}: use ignore or zeros")


# ----------------------------------------------------------------------------------------------------
# imagefolder: ROOT/CLASS/*.png  or  ROOT/{train,val,test}/CLASS/*.png
# ----------------------------------------------------------------------------------------------------
@register("imagefolder")
def imagefolder(root, classes=None, label_map=None, **_) -> Manifest:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: not a directory")
    top = sorted(d.name for d in root.iterdir() if d.is_dir())
    if top and all(t.lower() in SPLIT_ALIASES for t in top):
        groups = [(SPLIT_ALIASES[t.lower()], root / t) for t in top]
    else:
        groups = [(None, root)]
    rows = []
    for split, base in groups:
        for cdir in sorted(d for d in base.iterdir() if d.is_dir()):
            for p in sorted(cdir.rglob("*")):
                if p.suffix.lower() in IMAGE_EXTS and p.is_file():
                    rel = p.relative_to(root).as_posix()
                    rows.append(Row(path=rel, label=_rename(cdir.name, label_map), source=root.name,
                                    split=split, where=rel))
    return Manifest("imagefolder", str(root), rows, _classes_from([r.label for r in rows], classes))


# ----------------------------------------------------------------------------------------------------
# csv: path,label[,patient_id,view,source,split]  (the layout of cxr-small/natural-small labels.csv)
# ----------------------------------------------------------------------------------------------------
@register("csv")
def csv_kind(root, csv_file="labels.csv", classes=None, label_map=None, **_) -> Manifest:
    root = Path(root)
    path = Path(csv_file) if Path(csv_file).is_absolute() else root / csv_file
    rows = []
    for where, r in read_csv(path, ["path", "label"]):
        if not r["path"]:
            raise UserError(f"{where}: empty path")
        if not r["label"]:
            raise UserError(f"{where}: empty label")
        rows.append(Row(path=r["path"], label=_rename(r["label"], label_map),
                        patient_id=r.get("patient_id", ""), view=r.get("view", ""),
                        source=r.get("source", "") or root.name,
                        split=_split_alias(r.get("split", ""), where), where=where))
    return Manifest("csv", str(root), rows, _classes_from([r.label for r in rows], classes))


# ----------------------------------------------------------------------------------------------------
# chexpert: train.csv / valid.csv, 14 observations 1.0 / 0.0 / -1.0 / blank
# ----------------------------------------------------------------------------------------------------
@register("chexpert")
def chexpert(root, uncertain="ignore", blank="ignore", frontal_only=True, classes=None, **_) -> Manifest:
    _check_policy(uncertain, blank)
    root = Path(root)
    names = list(classes) if classes else CHEXPERT_CLASSES
    unknown = [c for c in names if c not in CHEXPERT_CLASSES]
    if unknown:
        raise UserError(f"chexpert: unknown observation(s) {unknown} (known: {CHEXPERT_CLASSES})")
    rows = []
    strip_first: Optional[bool] = None
    found = False
    for fname, split in (("train.csv", "train"), ("valid.csv", "val"), ("test.csv", "test")):
        path = root / fname
        if not path.is_file():
            continue
        found = True
        for where, r in read_csv(path, ["Path", "Frontal/Lateral", "AP/PA"] + names):
            if frontal_only and r["Frontal/Lateral"] != "Frontal":
                continue
            p = r["Path"]
            if strip_first is None:   # CSV paths start with the dataset folder name (CheXpert-v1.0-small/...)
                strip_first = not (root / p).exists() and "/" in p
            rel = p.split("/", 1)[1] if strip_first and "/" in p else p
            m = re.search(r"(patient\d+)", p)
            if not m:
                raise UserError(f"{where}: no patient id (patientNNNNN) in path {p!r}")
            label = [_uncertain_value(r[c], where, c, uncertain, blank) for c in names]
            rows.append(Row(path=rel, label=label, patient_id=m.group(1),
                            view=r["AP/PA"] or r["Frontal/Lateral"], source="chexpert", split=split,
                            where=where))
    if not found:
        raise UserError(f"{root}: no train.csv / valid.csv (CheXpert layout)")
    return Manifest("chexpert", str(root), rows, names, label_kind="multilabel", default_channels=1,
                    notes={"uncertain": uncertain, "blank": blank, "frontal_only": bool(frontal_only)})


# ----------------------------------------------------------------------------------------------------
# nih: Data_Entry_2017.csv, "|"-joined findings, train_val_list.txt / test_list.txt
# ----------------------------------------------------------------------------------------------------
def _read_list(path: Path) -> set:
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


@register("nih")
def nih(root, csv_file="Data_Entry_2017.csv", frontal_only=True, classes=None, **_) -> Manifest:
    root = Path(root)
    names = list(classes) if classes else NIH_CLASSES
    files = {p.name: p.relative_to(root).as_posix()
             for p in root.glob("images*/**/*.png")}
    official = {}
    for fname, split in (("train_val_list.txt", "train"), ("test_list.txt", "test")):
        if (root / fname).is_file():
            for name in _read_list(root / fname):
                official[name] = split
    rows = []
    for where, r in read_csv(root / csv_file, ["Image Index", "Finding Labels", "Patient ID", "View Position"]):
        if frontal_only and r["View Position"].upper() not in FRONTAL_VIEWS:
            continue
        findings = [x.strip() for x in r["Finding Labels"].split("|") if x.strip()]
        for x in findings:
            if x != "No Finding" and x not in NIH_CLASSES:
                raise UserError(f"{where}: unknown finding {x!r} (known: No Finding, {', '.join(NIH_CLASSES)})")
        if not findings:
            raise UserError(f"{where}: empty 'Finding Labels'")
        label = [1.0 if c in findings else 0.0 for c in names]
        name = r["Image Index"]
        split = official.get(name) if official else None
        if official and split is None:
            raise UserError(f"{where}: image {name} is in neither train_val_list.txt nor test_list.txt")
        rows.append(Row(path=files.get(name, f"images/{name}"), label=label,
                        patient_id=f"nih-{int(r['Patient ID'])}" if r["Patient ID"].isdigit() else r["Patient ID"],
                        view=r["View Position"], source="nih", split=split, where=where))
    return Manifest("nih", str(root), rows, names, label_kind="multilabel", default_channels=1)


# ----------------------------------------------------------------------------------------------------
# mimic: mimic-cxr-2.0.0-{chexpert,metadata,split}.csv[.gz], files/pXX/pSUBJECT/sSTUDY/DICOM.jpg
# ----------------------------------------------------------------------------------------------------
def _find(root: Path, stem: str) -> Path:
    for cand in (root / stem, root / (stem + ".gz")):
        if cand.is_file():
            return cand
    raise UserError(f"{root}: {stem}(.gz) not found (MIMIC-CXR-JPG layout)")


@register("mimic")
def mimic(root, uncertain="ignore", blank="ignore", frontal_only=True, classes=None, **_) -> Manifest:
    _check_policy(uncertain, blank)
    root = Path(root)
    names = list(classes) if classes else CHEXPERT_CLASSES
    labels = {}
    for where, r in read_csv(_find(root, "mimic-cxr-2.0.0-chexpert.csv"), ["subject_id", "study_id"] + names):
        labels[(r["subject_id"], r["study_id"])] = [_uncertain_value(r[c], where, c, uncertain, blank)
                                                    for c in names]
    splits = {}
    for where, r in read_csv(_find(root, "mimic-cxr-2.0.0-split.csv"), ["dicom_id", "split"]):
        splits[r["dicom_id"]] = _split_alias(r["split"], where)
    rows, unlabeled = [], 0
    for where, r in read_csv(_find(root, "mimic-cxr-2.0.0-metadata.csv"),
                             ["dicom_id", "subject_id", "study_id", "ViewPosition"]):
        if frontal_only and r["ViewPosition"].upper() not in FRONTAL_VIEWS:
            continue
        key = (r["subject_id"], r["study_id"])
        if key not in labels:
            unlabeled += 1
            continue
        sid = r["subject_id"]
        if r["dicom_id"] not in splits:
            raise UserError(f"{where}: dicom_id {r['dicom_id']} has no row in mimic-cxr-2.0.0-split.csv")
        rel = f"files/p{sid[:2]}/p{sid}/s{r['study_id']}/{r['dicom_id']}.jpg"
        rows.append(Row(path=rel, label=labels[key], patient_id=f"mimic-{sid}", view=r["ViewPosition"],
                        source="mimic", split=splits[r["dicom_id"]], where=where))
    return Manifest("mimic", str(root), rows, names, label_kind="multilabel", default_channels=1,
                    notes={"studies_without_labels_skipped": unlabeled, "uncertain": uncertain})


# ----------------------------------------------------------------------------------------------------
# padchest: ImageID, ImageDir, PatientID, Projection, Labels (Python list literal); 16-bit PNGs
# ----------------------------------------------------------------------------------------------------
@register("padchest")
def padchest(root, csv_file=None, frontal_only=True, classes=None, **_) -> Manifest:
    root = Path(root)
    if csv_file is None:
        cands = sorted(root.glob("PADCHEST*.csv")) + sorted(root.glob("PADCHEST*.csv.gz"))
        if len(cands) != 1:
            raise UserError(f"{root}: expected one PADCHEST*.csv, found {len(cands)}; pass --csv")
        path = cands[0]
    else:
        path = Path(csv_file) if Path(csv_file).is_absolute() else root / csv_file
    parsed = []
    for where, r in read_csv(path, ["ImageID", "PatientID", "Projection", "Labels"]):
        if frontal_only and r["Projection"].upper() not in FRONTAL_VIEWS:
            continue
        try:
            labs = ast.literal_eval(r["Labels"]) if r["Labels"] else []
            if not isinstance(labs, (list, tuple)):
                raise ValueError
        except (ValueError, SyntaxError):
            raise UserError(f"{where}: column 'Labels': {r['Labels']!r} is not a list literal") from None
        labs = sorted({str(x).strip().lower() for x in labs if str(x).strip()})
        d = r.get("ImageDir", "")
        rel = f"{d}/{r['ImageID']}" if d and (root / d).is_dir() else r["ImageID"]
        parsed.append((where, r, labs, rel))
    names = list(classes) if classes else sorted({x for _, _, labs, _ in parsed for x in labs})
    rows = [Row(path=rel, label=[1.0 if c in labs else 0.0 for c in names], patient_id=f"padchest-{r['PatientID']}",
                view=r["Projection"], source="padchest", where=where) for where, r, labs, rel in parsed]
    return Manifest("padchest", str(root), rows, names, label_kind="multilabel", default_channels=1)


# ----------------------------------------------------------------------------------------------------
# covidx: split files, one line per image: "patient_id filename label source"
# ----------------------------------------------------------------------------------------------------
@register("covidx")
def covidx(root, classes=None, label_map=None, **_) -> Manifest:
    root = Path(root)
    rows = []
    for split in ("train", "val", "test"):
        cands = sorted(p for p in root.glob(f"*{split}*.txt") if p.is_file())
        if len(cands) > 1:
            raise UserError(f"{root}: several {split} split files: {', '.join(c.name for c in cands)}")
        if not cands:
            continue
        listing = cands[0]
        for lineno, line in enumerate(listing.read_text().splitlines(), 1):
            if not line.strip():
                continue
            where = f"{listing}:{lineno}"
            parts = line.split()
            if len(parts) < 3:
                raise UserError(f"{where}: malformed line: expected 'patient_id filename label [source]', "
                                f"got {line!r}")
            if len(parts) == 3:
                pid, fname, label, source = parts[0], parts[1], parts[2], "covidx"
            else:
                pid, fname, label, source = parts[0], " ".join(parts[1:-2]), parts[-2], parts[-1]
            label = _rename(label, label_map)
            rel = None
            for d in (split, "train", "val", "test", ""):
                cand = f"{d}/{fname}" if d else fname
                if (root / cand).exists():
                    rel = cand
                    break
            rows.append(Row(path=rel or f"{split}/{fname}", label=label, patient_id=f"{source}-{pid}",
                            source=source, split=split, where=where))
    if not rows:
        raise UserError(f"{root}: no COVIDx split files (*train*.txt, *val*.txt, *test*.txt)")
    if classes:
        names = list(classes)
    else:
        seen = {r.label for r in rows}
        binary, three = seen & set(COVIDX_BINARY), seen & set(COVIDX_CLASSES)
        if binary and three:
            r = next(r for r in rows if r.label in binary)
            raise UserError(f"{r.where}: label {r.label!r} is binary COVIDx (positive/negative) but other rows "
                            f"use {sorted(three)}; pass --classes to choose")
        names = COVIDX_BINARY if binary else COVIDX_CLASSES
    return Manifest("covidx", str(root), rows, names, default_channels=1)


# ----------------------------------------------------------------------------------------------------
# ieee8023: covid-chestxray-dataset metadata.csv
# ----------------------------------------------------------------------------------------------------
IEEE_PNEUMONIA = {"sars", "streptococcus", "pneumonia", "pneumocystis", "klebsiella", "e.coli", "varicella",
                  "mycoplasma bacterial pneumonia", "legionella", "bacterial", "chlamydophila", "influenza",
                  "lipoid", "mers", "mers-cov", "viral", "fungal", "aspiration", "staphylococcus",
                  "herpes", "tuberculosis", "nocardia"}


def ieee8023_class(finding: str) -> Optional[str]:
    """COVIDx mapping of the upstream ``finding`` column; None = not one of the three classes."""
    f = finding.strip()
    parts = [p.strip().lower() for p in re.split(r"[/,]", f) if p.strip()]
    if any(p == "covid-19" for p in parts):
        return "COVID-19"
    if f.lower() == "no finding":
        return "normal"
    if parts and (parts[0] == "pneumonia" or all(p in IEEE_PNEUMONIA for p in parts)):
        return "pneumonia"
    return None


@register("ieee8023")
def ieee8023(root, csv_file="metadata.csv", classes=None, frontal_only=True, **_) -> Manifest:
    root = Path(root)
    rows, dropped = [], {}
    for where, r in read_csv(root / csv_file, ["patientid", "finding", "view", "modality", "filename"]):
        if r["modality"] != "X-ray":
            dropped["not X-ray"] = dropped.get("not X-ray", 0) + 1
            continue
        if frontal_only and r["view"].upper() not in FRONTAL_VIEWS:
            dropped["not frontal"] = dropped.get("not frontal", 0) + 1
            continue
        cls = ieee8023_class(r["finding"])
        if cls is None:
            key = f"finding {r['finding']}"
            dropped[key] = dropped.get(key, 0) + 1
            continue
        folder = r.get("folder", "") or "images"
        rows.append(Row(path=f"{folder}/{r['filename']}", label=cls, patient_id=f"ieee8023-{r['patientid']}",
                        view=r["view"], source="ieee8023-covid-chestxray", where=where))
    names = list(classes) if classes else [c for c in COVIDX_CLASSES if any(r.label == c for r in rows)]
    return Manifest("ieee8023", str(root), rows, names, default_channels=1, notes={"dropped": dropped})
