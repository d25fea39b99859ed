"""A small generated multi-domain dataset for the demo and tests (no download, no ../shared).

Three raw datasets, written in two real raw layouts:

* ``natural/``     imagefolder, RGB 32x32: shapes on textured colour backgrounds
                   (classes disc, square, cross, ring, stripes) -- a natural-image-like source;
* ``xray-source/`` csv (path,label,patient_id,view,source), gray 64x64 synthetic chest radiographs with
                   classes clear, consolidation, peripheral, effusion, several images per patient -- an
                   X-ray-like source;
* ``xray-target/`` csv, gray 64x64 radiographs with classes normal, pneumonia (one dense focal
                   consolidation), COVID-19 (bilateral faint peripheral opacities) -- the target.

**A planted transfer structure** (``xray_alignment``, a in [0, 1]): each image of the source's
``consolidation`` class carries the target's pneumonia primitive (a focal consolidation in one lung) with
probability a, else an unrelated nodule; each ``peripheral`` image carries the target's COVID-19 primitive
(bilateral peripheral opacities) with probability a, else an enlarged heart. At a = 1 the X-ray-like
source's classes are built from the very primitives that separate the target's classes, so features
learned on it serve the target by construction; at a = 0 its classes share nothing with the target's
beyond the anatomy. The natural-like source's shapes on textured colour backgrounds share nothing with
the target either: with a > 0, pre-training on the X-ray-like source must transfer better (linear probe,
few-shot), more of it better up to the floor the target's ambiguous cases set (``target_severity``
draws some findings near invisible).

Every class is defined by visible structure (a small CNN learns them); patients share anatomy across
their images, so patient-grouped splits matter. Output depends only on the arguments and the seed.
"""
from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

NATURAL_CLASSES = ["disc", "square", "cross", "ring", "stripes"]
XRAY_SOURCE_CLASSES = ["clear", "consolidation", "peripheral", "effusion"]
UNALIGNED_SOURCE_CLASSES = ["clear", "effusion", "nodule", "cardiomegaly"]   # xray_alignment=None: no planted structure
# source class -> (the target primitive it carries with probability xray_alignment, the unrelated one else)
ALIGNED = {"consolidation": ("pneumonia", "nodule"), "peripheral": ("COVID-19", "cardiomegaly")}
XRAY_TARGET_CLASSES = ["normal", "pneumonia", "COVID-19"]


def _grid(n):
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    return y, x


def natural_image(cls: str, rng: np.random.Generator, n: int = 32) -> np.ndarray:
    y, x = _grid(n)
    bg = rng.uniform(0, 255, 3)
    tex = rng.normal(0, 18, (n, n, 1)) + 12 * np.sin(x[..., None] * rng.uniform(0.2, 0.6) + rng.uniform(0, 6))
    img = bg[None, None, :] + tex
    fg = (bg + rng.uniform(90, 160, 3) * rng.choice([-1, 1], 3)) % 256
    cy, cx = rng.uniform(n * 0.35, n * 0.65, 2)
    r = rng.uniform(n * 0.18, n * 0.3)
    d = np.sqrt((y - cy) ** 2 + (x - cx) ** 2)
    if cls == "disc":
        m = d < r
    elif cls == "ring":
        m = (d < r) & (d > r * 0.55)
    elif cls == "square":
        m = (np.abs(y - cy) < r * 0.85) & (np.abs(x - cx) < r * 0.85)
    elif cls == "cross":
        w = r * 0.3
        m = ((np.abs(y - cy) < w) & (np.abs(x - cx) < r)) | ((np.abs(x - cx) < w) & (np.abs(y - cy) < r))
    elif cls == "stripes":
        ang = rng.uniform(0, np.pi)
        m = np.sin((x * np.cos(ang) + y * np.sin(ang)) * 0.9) > 0.3
    else:
        raise ValueError(cls)
    img[m] = fg + rng.normal(0, 10, (int(m.sum()), 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _blob(y, x, cy, cx, sy, sx):
    return np.exp(-(((y - cy) / sy) ** 2 + ((x - cx) / sx) ** 2))


def chest_image(patient: dict, finding: str, rng: np.random.Generator, n: int = 64, severity: float = 1.0) -> np.ndarray:
    """A frontal chest radiograph caricature: body, two dark lungs, heart, spine, ribs, plus a finding
    whose contrast is scaled by ``severity`` (subtle cases near 0 make some images ambiguous)."""
    y, x = _grid(n)
    p = patient
    s = n / 64.0
    img = np.full((n, n), 20.0)
    img += 120 * (((y - 34 * s) / (30 * s)) ** 2 + ((x - 32 * s) / (28 * s * p["width"])) ** 2 < 1)
    lungs = []
    for side in (-1, 1):
        cx = 32 * s + side * 11 * s * p["width"] + rng.normal(0, 0.5)
        lung = ((y - 30 * s) / (17 * s * p["height"])) ** 2 + ((x - cx) / (7.5 * s * p["width"])) ** 2 < 1
        lungs.append((lung, cx))
        img[lung] -= 85 * p["density"]
    ribs = 0.5 + 0.5 * np.sin((y + 0.02 * (x - 32 * s) ** 2) * 0.9 / s + p["rib_phase"])
    in_lungs = lungs[0][0] | lungs[1][0]
    img += 14 * ribs * in_lungs
    img += 60 * (np.abs(x - 32 * s) < 2.2 * s) * (y > 8 * s)
    heart_r = p["heart"] * (1 + 0.45 * severity if finding == "cardiomegaly" else 1.0)
    img += 70 * _blob(y, x, 40 * s, 29 * s, 8 * s * heart_r, 9 * s * heart_r)
    side = int(rng.integers(0, 2))
    lung, cx = lungs[side]
    if finding == "effusion":
        level = 30 * s + 17 * s * p["height"] * rng.uniform(0.25, 0.55)
        img += 75 * severity * (lung & (y > level + 2 * s * np.cos((x - cx) / (4 * s))))
    elif finding == "nodule":
        cy, cxx = 28 * s + rng.normal(0, 5 * s), cx + rng.normal(0, 2 * s)
        img += 95 * severity * _blob(y, x, cy, cxx, 2.2 * s, 2.2 * s)
    elif finding == "pneumonia":
        cy, cxx = 34 * s + rng.normal(0, 3 * s), cx + rng.normal(0, 1.5 * s)
        img += 80 * severity * _blob(y, x, cy, cxx, 6.5 * s, 4.5 * s) * lung
    elif finding == "COVID-19":
        for lung_i, c_i in lungs:
            outer = 1 if c_i > 32 * s else -1
            for _ in range(3):
                cy = 30 * s + rng.normal(0, 7 * s)
                cxx = c_i + outer * 4.5 * s * p["width"] + rng.normal(0, 1 * s)
                img += 32 * severity * _blob(y, x, cy, cxx, 4.5 * s, 2.5 * s) * lung_i
    img = img * p["exposure"] + rng.normal(0, 6, (n, n))
    return np.clip(img, 0, 255).astype(np.uint8)


def _patient(rng) -> dict:
    return {"width": rng.uniform(0.9, 1.1), "height": rng.uniform(0.9, 1.1), "density": rng.uniform(0.85, 1.1),
            "heart": rng.uniform(0.9, 1.1), "rib_phase": rng.uniform(0, 6.3), "exposure": rng.uniform(0.85, 1.15)}


def _save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG")


def _write_csv(path: Path, rows: list) -> None:
    tmp = path.with_name(".tmp." + path.name)
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "patient_id", "view", "source"])
        w.writerows(rows)
    os.replace(tmp, path)


def _xray_set(root: Path, classes, per_class: int, images_per_patient: tuple, source: str,
              rng: np.random.Generator, size: int, severity=(1.0, 1.0), alignment: float | None = None) -> None:
    rows = []
    pid = 0
    for cls in classes:
        made = 0
        while made < per_class:
            pid += 1
            patient = _patient(rng)
            for _ in range(min(int(rng.integers(images_per_patient[0], images_per_patient[1] + 1)),
                               per_class - made)):
                rel = f"images/{cls}/{source}-p{pid:04d}-{made:04d}.png"
                sev = rng.uniform(*severity) if severity[0] < severity[1] else severity[0]
                finding = cls
                if alignment is not None and cls in ALIGNED:
                    finding = ALIGNED[cls][0] if rng.uniform() < alignment else ALIGNED[cls][1]
                _save(chest_image(patient, finding, rng, size, sev), root / rel)
                rows.append([rel, cls, f"{source}-p{pid:04d}", rng.choice(["PA", "AP"]), source])
                made += 1
    _write_csv(root / "labels.csv", rows)


def generate(out: str | os.PathLike, per_class: int = 160, target_per_class: int = 100, seed: int = 0,
             xray_size: int = 64, xray_per_class: int | None = None, target_severity=(1.0, 1.0),
             xray_alignment: float | None = 1.0, source_severity=(0.4, 1.0)) -> dict:
    """Write the three raw datasets under ``out``; return {name: path}. Skips what is already complete.
    ``per_class``: natural images per class; ``xray_per_class``: X-ray source images per class (default
    per_class); ``target_per_class``: target images per class; ``target_severity``: the range the
    target's finding contrast is drawn from per image (low values: subtle, sometimes ambiguous cases, so
    that no model reaches zero error); ``xray_alignment``: the planted alignment of the X-ray-like source
    with the target (module docstring; None: the earlier source, findings clear / effusion / nodule /
    cardiomegaly at full contrast, sharing nothing planted with the target); ``source_severity``: the
    source findings' contrast range."""
    if xray_alignment is not None and not 0.0 <= xray_alignment <= 1.0:
        raise ValueError(f"xray_alignment {xray_alignment} is not in [0, 1]")
    out = Path(out)
    xray_per_class = per_class if xray_per_class is None else xray_per_class
    paths = {"natural": out / "natural", "xray-source": out / "xray-source", "xray-target": out / "xray-target"}
    stamp = out / ".complete"
    want = f"{per_class} {target_per_class} {seed} {xray_size} {xray_per_class} {tuple(target_severity)}\n"
    if xray_alignment is not None:
        want = want[:-1] + f" {xray_alignment} {tuple(source_severity)} v2\n"
    if stamp.is_file() and stamp.read_text() == want:
        return {k: str(v) for k, v in paths.items()}
    for p in paths.values():                  # other settings were asked for: start clean
        shutil.rmtree(p, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    rng = np.random.default_rng(seed)
    for cls in NATURAL_CLASSES:
        for i in range(per_class):
            _save(natural_image(cls, rng), paths["natural"] / cls / f"{cls}-{i:04d}.png")
    if xray_alignment is None:
        _xray_set(paths["xray-source"], UNALIGNED_SOURCE_CLASSES, xray_per_class, (2, 5), "synth-cxr", rng, xray_size)
    else:
        _xray_set(paths["xray-source"], XRAY_SOURCE_CLASSES, xray_per_class, (2, 5), "synth-cxr", rng, xray_size,
                  tuple(source_severity), alignment=xray_alignment)
    _xray_set(paths["xray-target"], XRAY_TARGET_CLASSES, target_per_class, (1, 3), "synth-covidx", rng,
              xray_size, tuple(target_severity))
    stamp.write_text(want)
    return {k: str(v) for k, v in paths.items()}
