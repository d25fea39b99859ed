"""Tiny raw datasets in the real on-disk layouts (headers and value conventions as the real files)."""
from pathlib import Path

import numpy as np

from tests.conftest import write_png

CHEXPERT_HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
                   "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
                   "Pleural Effusion,Pleural Other,Fracture,Support Devices")


def _img(rng, size=24):
    return rng.integers(0, 256, (size, size), dtype=np.uint8)


def make_chexpert(root: Path) -> Path:
    rng = np.random.default_rng(0)
    base = root / "CheXpert-v1.0-small"
    rows = {"train": [], "valid": []}
    specs = [  # split, patient, study, view, frontal, AP/PA, values (14)
        ("train", 1, 1, 1, "Frontal", "AP", ["", "", "", "1.0", "", "", "", "", "-1.0", "", "1.0", "", "", "1.0"]),
        ("train", 1, 1, 2, "Lateral", "", ["", "", "", "1.0", "", "", "", "", "-1.0", "", "1.0", "", "", "1.0"]),
        ("train", 2, 1, 1, "Frontal", "PA", ["1.0", "", "", "", "", "", "", "", "", "0.0", "", "", "", ""]),
        ("train", 3, 2, 1, "Frontal", "AP", ["", "", "-1.0", "1.0", "", "0.0", "", "-1.0", "", "", "", "", "", ""]),
        ("valid", 64541, 1, 1, "Frontal", "AP", ["0.0", "0.0", "1.0", "1.0", "0.0", "0.0", "0.0", "0.0", "0.0",
                                                 "0.0", "1.0", "0.0", "0.0", "1.0"]),
    ]
    for split, pat, study, view, fl, appa, vals in specs:
        rel = f"CheXpert-v1.0-small/{split}/patient{pat:05d}/study{study}/view{view}_{fl.lower()}.jpg"
        from PIL import Image
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_img(rng)).save(p, format="JPEG")
        rows[split].append(",".join([rel, "Female", "68", fl, appa] + vals))
    for split in rows:
        (base / f"{split}.csv").write_text(CHEXPERT_HEADER + "\n" + "\n".join(rows[split]) + "\n")
    return base


NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")


def make_nih(root: Path) -> Path:
    rng = np.random.default_rng(1)
    rows = [("00000001_000.png", "Cardiomegaly", 0, 1, "PA"),
            ("00000001_001.png", "Cardiomegaly|Emphysema", 1, 1, "PA"),
            ("00000002_000.png", "No Finding", 0, 2, "AP"),
            ("00000003_000.png", "Hernia|Infiltration", 0, 3, "PA"),
            ("00000004_000.png", "Mass|Nodule", 0, 4, "LL")]
    lines = [NIH_HEADER]
    for i, (name, f, fu, pid, view) in enumerate(rows):
        sub = "images_001" if i < 3 else "images_002"
        write_png(root / sub / "images" / name, _img(rng))
        lines.append(f"{name},{f},{fu},{pid},58,M,{view},2682,2749,0.143,0.143")
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    (root / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n00000004_000.png\n")
    (root / "test_list.txt").write_text("00000002_000.png\n00000003_000.png\n")
    return root


MIMIC_LABELS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
                "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other",
                "Pneumonia", "Pneumothorax", "Support Devices"]


def make_mimic(root: Path) -> Path:
    import gzip
    rng = np.random.default_rng(2)
    studies = [("10000032", "50414267", {"Atelectasis": "1.0", "Edema": "-1.0", "No Finding": ""}),
               ("10000764", "57375967", {"No Finding": "1.0"}),
               ("10000898", "50771383", {"Pneumonia": "-1.0", "Pleural Effusion": "0.0"})]
    lab_lines = ["subject_id,study_id," + ",".join(MIMIC_LABELS)]
    for sid, st, vals in studies:
        lab_lines.append(f"{sid},{st}," + ",".join(vals.get(c, "") for c in MIMIC_LABELS))
    with gzip.open(root / "mimic-cxr-2.0.0-chexpert.csv.gz", "wt") as f:
        f.write("\n".join(lab_lines) + "\n")
    meta = ["dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,"
            "StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
            "PatientOrientationCodeSequence_CodeMeaning"]
    split = ["dicom_id,study_id,subject_id,split"]
    dicoms = [("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", "10000032", "50414267", "PA", "train"),
              ("174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", "10000032", "50414267", "LATERAL", "train"),
              ("fe8a5a5b-1c5f5a2e-0c1b2a3c-4d5e6f70-81920a1b", "10000764", "57375967", "AP", "validate"),
              ("0a1b2c3d-4e5f6071-8293a4b5-c6d7e8f9-0a1b2c3d", "10000898", "50771383", "PA", "test")]
    from PIL import Image
    for d, sid, st, view, sp in dicoms:
        meta.append(f"{d},{sid},{st},CHEST (PA AND LAT),{view},3056,2544,21800506,213014.531,"
                    f"CHEST (PA AND LAT),postero-anterior,Erect")
        split.append(f"{d},{st},{sid},{sp}")
        p = root / f"files/p{sid[:2]}/p{sid}/s{st}/{d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_img(rng)).save(p, format="JPEG")
    (root / "mimic-cxr-2.0.0-metadata.csv").write_text("\n".join(meta) + "\n")
    (root / "mimic-cxr-2.0.0-split.csv").write_text("\n".join(split) + "\n")
    return root


def make_padchest(root: Path) -> Path:
    """16-bit PNGs (mode I;16), ImageDir sub-folders, Labels as Python list literals."""
    from PIL import Image
    rng = np.random.default_rng(3)
    rows = [("216840111366964012283393834152009033102258826_00-084-066.png", "0", "12345", "PA",
             "['normal']"),
            ("216840111366964013076187734852011291090445391_00-196-188.png", "0", "12345", "PA",
             "['pneumonia', 'chronic changes']"),
            ("216840111366964012989926673512011101154321235_00-002-107.png", "1", "777", "L",
             "['normal']"),
            ("216840111366964012339356563862009072111404053_00-043-192.png", "1", "888", "AP_horizontal",
             "['COPD signs', ' pneumonia']")]
    header = ("ImageID,ImageDir,StudyDate_DICOM,StudyID,PatientID,PatientBirth,PatientSex_DICOM,"
              "ViewPosition_DICOM,Projection,MethodProjection,Pediatric,Modality_DICOM,Manufacturer_DICOM,"
              "PhotometricInterpretation_DICOM,PixelRepresentation_DICOM,PixelAspectRatio_DICOM,"
              "SpatialResolution_DICOM,BitsStored_DICOM,WindowCenter_DICOM,WindowWidth_DICOM,Rows_DICOM,"
              "Columns_DICOM,XRayTubeCurrent_DICOM,Exposure_DICOM,ExposureInuAs_DICOM,ExposureTime,"
              "RelativeXRayExposure_DICOM,ReportID,Report,MethodLabel,Labels,Localizations,LabelsLocalizationsBySentence,"
              "labelCUIS,LocalizationsCUIS")
    lines = [header]
    for img, d, pid, proj, labels in rows:
        arr = (rng.integers(0, 4096, (24, 24)) * 16).astype(np.uint16)
        p = root / d / img
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(p)      # 16-bit grayscale PNG
        fields = [img, d, "20090331", "x", pid, "1929", "M", "POSTEROANTERIOR", proj, "Manual review", "No",
                  "CR", "PhilipsMedicalSystems", "MONOCHROME2", "0", "1\\1", "0.139", "12", "2048", "4096",
                  "2428", "2428", "", "", "", "", "", "4765777", "report text", "Physician",
                  '"' + labels + '"', "[]", "[]", "[]", "[]"]
        lines.append(",".join(fields))
    (root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv").write_text("\n".join(lines) + "\n")
    return root


def make_covidx(root: Path) -> Path:
    rng = np.random.default_rng(4)
    train = ["419639-003251 MIDRC-RICORD-1C-419639-003251-46647-0.png positive rsna",
             "3 SARS-10.1148rg.242035193-g04mr34g0-Fig8a-day0.jpeg negative cohen",
             "ddd55a7c-3c1f-4d2b-8d4a-5d1f8b1d5a8d ddd55a7c.png negative rsna",
             "419639-003251 MIDRC-RICORD-1C-419639-003251-46648-0.png positive rsna"]
    test = ["covid-19-pneumonia-58 covid-19-pneumonia-58-day-9.jpg positive cohen",
            "7b1e0e6e 7b1e0e6e.png negative rsna"]
    for split, lines in (("train", train), ("test", test)):
        for line in lines:
            write_png(root / split / line.split()[1], _img(rng))
    (root / "train_COVIDx9A.txt").write_text("\n".join(train) + "\n")
    (root / "test_COVIDx9A.txt").write_text("\n".join(test) + "\n")
    return root


def make_ieee8023(root: Path) -> Path:
    rng = np.random.default_rng(5)
    header = ("patientid,offset,sex,age,finding,RT_PCR_positive,survival,intubated,intubation_present,went_icu,"
              "in_icu,needed_supplemental_O2,extubated,temperature,pO2_saturation,leukocyte_count,neutrophil_count,"
              "lymphocyte_count,view,modality,date,location,folder,filename,doi,url,license,clinical_notes,"
              "other_notes,Unnamed: 29")
    rows = [("2", "0", "Pneumonia/Viral/COVID-19", "PA", "X-ray", "auntminnie-a-2020_01_28_23_51_6665_2020_01_28_Vietnam_coronavirus.jpeg"),
            ("2", "3", "Pneumonia/Viral/COVID-19", "PA", "X-ray", "auntminnie-b-2020_01_28_23_51_6665_2020_01_28_Vietnam_coronavirus.jpeg"),
            ("5", "", "Pneumonia/Bacterial/Streptococcus", "AP Supine", "X-ray", "streptococcus-pneumoniae-pneumonia-1.jpg"),
            ("6", "", "No Finding", "PA", "X-ray", "normal-1.png"),
            ("7", "", "COVID-19", "L", "X-ray", "lateral-1.png"),
            ("8", "", "Pneumonia/Viral/COVID-19", "Axial", "CT", "ct-1.png"),
            ("9", "", "ARDS", "PA", "X-ray", "ards-1.png"),
            ("10", "", "SARS", "AP", "X-ray", "sars-1.png")]
    lines = [header]
    for pid, off, finding, view, mod, fname in rows:
        write_png(root / "images" / fname, _img(rng))
        f = [pid, off, "M", "65", finding, "Y", "", "", "", "", "", "", "", "", "", "", "", "", view, mod,
             "2020", "Vietnam", "images", fname, "", "https://example.org", "CC BY 4.0", "notes, with comma", "", ""]
        lines.append(",".join(f'"{x}"' if "," in x else x for x in f))
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root
