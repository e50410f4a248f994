"""Lesion SUVmax recovery per lesion and per class, and false-positive hot spots (petsynth.metrics.lesions and
`petsynth evaluate`): the numbers recomputed here with numpy on hand-made volumes and datasets; the lesion
class carried from truth.json through prepare into the label table; the real PET scored against the phantom
truth has (next to) no false positive."""

import csv
import json
import math
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from petsynth.cli import app
from petsynth.data.prepare import phantom_label_table, prepare_dataset
from petsynth.data.store import check_label_table, create_dataset, open_dataset, write_study
from petsynth.evaluate import SCANNER, _runs, evaluate
from petsynth.metrics.lesions import (false_positive_hot_spots, labelled_uptake, lesion_class, uptake_labels)

SPACING, DZ = 4.0, 3.0  # mm: the hand-made dataset's pixels and slice distance
VOXEL_ML = SPACING * SPACING * DZ / 1000


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# --- the hot-spot counter on hand-made volumes --------------------------------------------------------------
def _volumes():
    """A (4, 24, 24) study: background 1 SUV, an avid lesion (label 100), a benign one (101), a hot organ (1,
    SUVmean 3) in the reference; and a prediction with hot blobs in and out of them."""
    ref = np.ones((4, 24, 24))
    labels = np.zeros((4, 24, 24), np.int64)
    labels[:, 2:6, 2:6], ref[:, 2:6, 2:6] = 100, 1.5  # avid lesion, invisible in the reference (uptake by label)
    labels[:, 2:6, 16:20] = 101  # benign, 1 SUV
    labels[:, 16:22, 2:8], ref[:, 16:22, 2:8] = 1, 1.9  # an organ of SUVmean 2.1 > 4 / 2 (uptake by label) ...
    ref[:, 16, 2] = 9.0  # ... from one hot edge, away from the prediction's blob in it
    table = [{"label": 1, "name": "liver", "kind": "organ"},
             {"label": 100, "name": "lesion_0", "kind": "lesion", "class": "ct_occult"},
             {"label": 101, "name": "lesion_1", "kind": "lesion", "class": "benign"}]
    pred = np.ones((4, 24, 24))
    pred[1:3, 3:5, 3:5] = 7.0  # inside the avid lesion: not a false positive
    pred[1, 3:5, 16:18] = 5.0  # inside the benign lesion, at its edge: a false positive
    pred[0:2, 10:12, 12:14] = 6.0  # outside everything, 2 slices deep: one false positive of 8 voxels
    pred[2, 9, 11] = 9.0  # ... touching it only by a corner: joins it with 26-connectivity
    pred[3, 20:22, 12:14] = 3.9  # under the threshold: nothing
    pred[2, 18:20, 4:6] = 8.0  # inside the hot organ: not a false positive
    return ref, labels, table, pred


def test_hot_spots_outside_labelled_uptake_are_counted_with_their_size_and_peak():
    ref, labels, table, pred = _volumes()
    uptake_ids, benign_ids = uptake_labels(ref, labels, table, 4.0)
    assert uptake_ids == {1, 100} and benign_ids == {101}
    uptake = labelled_uptake(ref, labels, uptake_ids, benign_ids, 4.0)
    assert uptake[labels == 100].all() and not uptake[labels == 101].any() and uptake[labels == 1].all()
    spots = false_positive_hot_spots(pred, uptake, 4.0, voxel_ml=VOXEL_ML)
    assert [(s["voxels"], s["suvmax"], s["peak"]) for s in spots] == [(9, 9.0, (2, 9, 11)), (4, 5.0, (1, 3, 16))]
    assert spots[0]["volume_ml"] == pytest.approx(9 * VOXEL_ML)
    six = false_positive_hot_spots(pred, uptake, 4.0, connectivity=6)
    assert sorted(s["voxels"] for s in six) == [1, 4, 8]  # the corner voxel is its own component
    assert math.isnan(six[0]["volume_ml"])  # no voxel size given
    # the reference >= threshold / 2, dilated by one voxel, is uptake: a hot blob next to a warm voxel is not counted
    warm = ref.copy()
    warm[0, 9, 11] = 2.0
    near = labelled_uptake(warm, labels, uptake_ids, benign_ids, 4.0)
    assert len(false_positive_hot_spots(pred, near, 4.0)) == 1
    # a benign lesion is never uptake, even within one voxel of a warm reference voxel
    beside = ref.copy()
    beside[:, 2:6, 15] = 3.0
    uptake_beside = labelled_uptake(beside, labels, uptake_ids, benign_ids, 4.0)
    assert uptake_beside[:, 2:6, 14:16].all() and not uptake_beside[labels == 101].any()
    assert [s["voxels"] for s in false_positive_hot_spots(pred, uptake_beside, 4.0)] == [9, 4]
    # without labels only the reference counts: the blobs in the avid lesion and in the organ become false positives
    bare = labelled_uptake(ref, None, (), (), 4.0)
    assert sorted(s["voxels"] for s in false_positive_hot_spots(pred, bare, 4.0)) == [4, 4, 8, 9]
    with pytest.raises(ValueError, match="connectivity"):
        false_positive_hot_spots(pred, uptake, 4.0, connectivity=8)


def test_runs_split_at_gaps_and_planes():
    assert _runs([3, 4, 5, 9, 10], [""] * 5, False) == [[0, 1, 2], [3, 4]]
    assert _runs([3, 4, 5], ["axial", "axial", "coronal"], False) == [[0, 1], [2]]
    assert _runs([3, 4], ["", ""], True) == [[0], [1]]


# --- the label table's lesion classes --------------------------------------------------------------------
def test_label_table_keeps_lesion_classes_and_old_tables_stay_valid():
    record = {"labels": [{"label": 0, "name": "air"}, {"label": 7, "name": "liver"}],
              "lesions": [{"label": 100, "class": "ct_visible", "kind": "lung_nodule"},
                          {"label": 101, "class": "benign", "kind": "liver_cyst"}, {"label": 102}]}
    table = phantom_label_table(record)
    assert table == [{"label": 7, "name": "liver", "kind": "organ"},
                     {"label": 100, "name": "lesion_0", "kind": "lesion", "class": "ct_visible",
                      "lesion_kind": "lung_nodule"},
                     {"label": 101, "name": "lesion_1", "kind": "lesion", "class": "benign", "lesion_kind": "liver_cyst"},
                     {"label": 102, "name": "lesion_2", "kind": "lesion"}]
    assert check_label_table(table) == table
    assert [lesion_class(r) for r in table[1:]] == ["ct_visible", "benign", "unclassified"]
    for bad in ({"label": 5, "name": "x", "kind": "lesion", "class": "malignant"},
                {"label": 5, "name": "x", "kind": "organ", "class": "benign"},
                {"label": 5, "name": "x", "kind": "lesion", "lesion_kind": ""}):
        with pytest.raises(ValueError, match="bad label table row"):
            check_label_table([bad])


def test_lesion_classes_go_from_truth_json_through_prepare(tmp_path):
    from petsynth.phantom import write_studies

    write_studies(tmp_path / "raw", task="ct2pet", studies=1, seed=5, fmt="dicom", preset="tiny")
    (truth_path,) = list((tmp_path / "raw").rglob("truth.json"))
    record = json.loads(truth_path.read_text())
    assert record["lesions"], "the tiny phantom has lesions"
    classes = ["ct_visible", "ct_occult", "benign"]
    for n, lesion in enumerate(record["lesions"]):
        lesion.update({"class": classes[n % 3], "kind": f"kind_{n}"})
    if len(record["lesions"]) > 1:
        del record["lesions"][-1]["class"], record["lesions"][-1]["kind"]  # an old-style lesion
    truth_path.write_text(json.dumps(record))
    prepare_dataset([tmp_path / "raw"], tmp_path / "ds", "ct2pet", size=32, key=b"k")
    ds = open_dataset(tmp_path / "ds")
    (study,) = ds.studies
    lesions = [r for r in ds.label_table(study) if r["kind"] == "lesion"]
    want = [{k: v for k, v in (("class", les.get("class")), ("lesion_kind", les.get("kind"))) if v}
            for les in record["lesions"]]
    assert [{k: r[k] for k in ("class", "lesion_kind") if k in r} for r in lesions] == want
    assert [r["name"] for r in lesions] == [f"lesion_{n}" for n in range(len(record["lesions"]))]


# --- evaluate end to end on a hand-made dataset ---------------------------------------------------------
#: Lesions of the hand-made studies: label -> (class or None, lesion_kind or None, rows, cols, reference SUV,
#: predicted SUV); the prediction is the low-dose "model" (the dataset's source itself).
LESIONS = {
    "sa": {100: ("ct_visible", "lung_nodule", (2, 6), (2, 6), 8.0, 7.0),
           101: ("ct_occult", None, (2, 6), (10, 14), 6.0, 3.0),
           102: ("benign", "liver_cyst", (2, 6), (20, 24), 1.2, 5.0),
           103: (None, None, (10, 13), (26, 30), 5.0, 5.5)},
    "sb": {100: ("ct_visible", "bone_metastasis", (2, 5), (2, 5), 10.0, 12.5),
           104: ("ct_visible", None, (24, 28), (24, 28), 4.0, 4.4)},
}


def _lesion_dataset(root):
    """An lpet2spet dataset of two 4-slice studies (32 px, 4 mm pixels, 3 mm apart) whose source is the
    prediction of the "low-dose" method; returns {study: (source, target, labels)}."""
    create_dataset(root, task="lpet2spet", size=32)
    arrays = {}
    for study, lesions in LESIONS.items():
        target = np.ones((4, 32, 32), np.float32)
        source = target.copy()
        labels = np.zeros((4, 32, 32), np.uint8)
        labels[:, 24:30, 2:10], target[:, 24:30, 2:10], source[:, 24:30, 2:10] = 1, 2.5, 2.5  # liver
        table = [{"label": 1, "name": "liver", "kind": "organ"}]
        for n, (label, (cls, kind, (r0, r1), (c0, c1), ref, pred)) in enumerate(lesions.items()):
            labels[:, r0:r1, c0:c1] = label
            target[:, r0:r1, c0:c1], source[:, r0:r1, c0:c1] = ref * 0.8, pred * 0.8
            target[1, r0 + 1, c0 + 1], source[2, r0 + 1, c0 + 1] = ref, pred  # the maxima
            row = {"label": label, "name": f"lesion_{n}", "kind": "lesion"}
            row.update({k: v for k, v in (("class", cls), ("lesion_kind", kind)) if v})
            table.append(row)
        if study == "sa":
            source[1:3, 14:16, 14:16] = 6.5  # a hot spot outside any uptake: 8 voxels
            source[3, 20, 20] = 4.5  # another, a lone voxel
            source[0, 28, 20] = 3.9  # under the threshold
        write_study(root, study, {"source": source, "target": target, "labels": labels},
                    {"index": [0, 1, 2, 3], "z_mm": [0.0, DZ, 2 * DZ, 3 * DZ]},
                    {"spacing_mm": [SPACING, SPACING], "kvp": 120.0, "units": "GML", "label_table": table})
        arrays[study] = (source.astype(np.float64), target.astype(np.float64), labels)
    return arrays


@pytest.fixture(scope="module")
def lesion_eval(tmp_path_factory):
    root = tmp_path_factory.mktemp("lesions")
    arrays = _lesion_dataset(root / "ds")
    report = evaluate(["low-dose"], root / "ds", root / "out", split="all")
    return report, root / "out", arrays


def test_per_lesion_recovery_equals_numpy(lesion_eval):
    report, out, arrays = lesion_eval
    rows = _read_csv(out / "lesions.csv")
    assert list(rows[0]) == ["model", "reference", "study", "lesion", "label", "class", "lesion_kind", "voxels",
                             "suvmax_ref", "suvmax_pred", "recovery"]
    got = {(r["study"], int(r["label"])): r for r in rows}
    assert set(got) == {(s, label) for s, lesions in LESIONS.items() for label in lesions}
    for (study, label), row in got.items():
        source, target, labels = arrays[study]
        inside = labels == label
        cls, kind = LESIONS[study][label][:2]
        assert row["model"] == "low-dose" and row["reference"] == "real"
        assert row["class"] == (cls or "unclassified") and row["lesion_kind"] == (kind or "")
        assert int(row["voxels"]) == inside.sum()
        assert float(row["suvmax_ref"]) == pytest.approx(target[inside].max(), rel=1e-6)
        assert float(row["suvmax_pred"]) == pytest.approx(source[inside].max(), rel=1e-6)
        assert float(row["recovery"]) == pytest.approx(source[inside].max() / target[inside].max(), rel=1e-6)


def test_per_class_recovery_equals_numpy(lesion_eval):
    report, out, arrays = lesion_eval
    by_class = {}
    for study, lesions in LESIONS.items():
        source, target, labels = arrays[study]
        for label, (cls, *_rest) in lesions.items():
            inside = labels == label
            by_class.setdefault(cls or "unclassified", []).append(source[inside].max() / target[inside].max())
    want = {c: (len(v), np.mean(v), np.mean(np.abs(np.array(v) - 1) <= 0.3)) for c, v in by_class.items()}
    # recoveries 7/8, 12.5/10, 4.4/4 (ct_visible), 3/6 (ct_occult), 5/1.2 (benign), 5.5/5 (unclassified)
    assert want["ct_visible"][2] == pytest.approx(1.0) and want["ct_occult"][2] == 0.0
    got = report.lesion_classes["low-dose"]["real"]
    assert list(got) == ["ct_visible", "ct_occult", "benign", "unclassified"]
    metrics = {(r["study"], r["region"], r["metric"]): r for r in _read_csv(out / "metrics.csv")}
    settings = json.loads((out / "evaluation.json").read_text())
    for cls, (count, mean, within) in want.items():
        assert got[cls]["count"] == count and got[cls]["mean_recovery"] == pytest.approx(mean, rel=1e-6)
        assert got[cls]["within_tolerance"] == pytest.approx(within)
        row = metrics[("overall", f"lesions:{cls}", "suvmax_recovery")]
        assert float(row["mean"]) == pytest.approx(mean, rel=1e-6) and int(row["n"]) == count
        assert float(metrics[("overall", f"lesions:{cls}", "recovery_within_30pct")]["mean"]) == pytest.approx(within)
        saved = settings["lesion_recovery"]["classes"]["low-dose"]["real"][cls]
        assert saved["count"] == count and saved["mean_recovery"] == pytest.approx(mean, rel=1e-6)
    # per study too: sb has only ct_visible lesions
    assert float(metrics[("sb", "lesions:ct_visible", "suvmax_recovery")]["mean"]) == pytest.approx(
        np.mean([12.5 / 10, 4.4 / 4]), rel=1e-6)
    assert ("sb", "lesions:benign", "suvmax_recovery") not in metrics
    table = (out / "table.md").read_text()
    assert "## Lesion SUVmax recovery against the real" in table
    assert f"| low-dose | ct_occult | 1 | {3 / 6:.3f} (0.000) | 0 % |" in table


def test_false_positive_hot_spots_end_to_end(lesion_eval):
    report, out, arrays = lesion_eval
    rows = _read_csv(out / "hot_spots.csv")
    assert list(rows[0]) == ["model", "reference", "study", "component", "voxels", "volume_ml", "suvmax", "slice",
                             "z_mm", "row", "col"]
    # sa: the 8-voxel blob, the lone voxel and the benign lesion (pred 5 * 0.8 = 4 is not > 4, its peak 5 is): 3
    got = [(r["study"], int(r["voxels"]), float(r["suvmax"]), int(r["slice"]), int(r["row"]), int(r["col"]))
           for r in rows]
    benign_peak = (2, 2 + 1, 20 + 1)
    assert got == [("sa", 8, 6.5, 1, 14, 14), ("sa", 1, 5.0, *benign_peak), ("sa", 1, 4.5, 3, 20, 20)]
    assert float(rows[0]["volume_ml"]) == pytest.approx(8 * VOXEL_ML)
    assert report.hot_spots["per_model"]["low-dose"] == {"total": 3, "per_study": {"sa": 3, "sb": 0}}
    assert report.hot_spots["reference"] == "real" and report.hot_spots["threshold_suv"] == 4.0
    metrics = {(r["study"], r["region"], r["metric"]): r for r in _read_csv(out / "metrics.csv")}
    assert float(metrics[("sa", "false_positive_hot_spots", "count")]["mean"]) == 3
    assert float(metrics[("overall", "false_positive_hot_spots", "total")]["mean"]) == 3
    assert float(metrics[("overall", "false_positive_hot_spots", "count")]["mean"]) == 1.5
    settings = json.loads((out / "evaluation.json").read_text())
    assert len(settings["hot_spots"]["components"]) == 3 and "dilated by one voxel" in settings["hot_spots"][
        "labelled_uptake"]
    table = (out / "table.md").read_text()
    assert "## False-positive hot spots (prediction > 4 SUV outside labelled uptake)" in table
    assert "| low-dose | 3 | 1 of 2 | 8 |" in table and "benign lesions' voxels are never uptake" in table
    assert "## Organ SUVmean against the real" in table and "| liver | 2.500 | 2.500 | +0.0 % |" in table


def test_hot_spot_threshold_option_and_non_contiguous_slices(lesion_eval, tmp_path):
    _, out, _ = lesion_eval
    data = out.parent / "ds"
    result = CliRunner().invoke(app, ["evaluate", "low-dose", "--data", str(data), "--out", str(tmp_path / "o"),
                                      "--split", "all", "--hot-spot-suv", "6", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "false-positive hot spots > 6 SUV (vs real): low-dose 1" in " ".join(result.output.split())
    assert "lesion SUVmax recovery, low-dose vs real" in result.output
    assert [int(r["voxels"]) for r in _read_csv(tmp_path / "o" / "hot_spots.csv")] == [8]
    bad = CliRunner().invoke(app, ["evaluate", "low-dose", "--data", str(data), "--out", str(tmp_path / "x"),
                                   "--split", "all", "--hot-spot-suv", "0"])
    assert bad.exit_code == 1 and "hot-spot threshold" in bad.output
    # 5 of the 8 slices: sa's slices 0 and 2 (apart: per slice; half the blob on slices 1-2 is seen), sb's 0, 1, 3
    report = evaluate(["low-dose"], data, tmp_path / "m", split="all", max_slices=5)
    spots = _read_csv(tmp_path / "m" / "hot_spots.csv")
    assert [(r["study"], int(r["slice"]), int(r["voxels"])) for r in spots] == [("sa", 2, 4), ("sa", 2, 1)]
    assert report.hot_spots["per_model"]["low-dose"] == {"total": 2, "per_study": {"sa": 2, "sb": 0}}


# --- the reference scored the same way: (next to) no false positive -------------------------------------------
def test_the_real_pet_against_the_phantom_truth_has_next_to_no_false_positives(lowdose_studies, tmp_path):
    data = lowdose_studies / "ds"
    report = evaluate(["low-dose"], data, tmp_path / "out", split="all")
    assert report.hot_spots["reference"] == "truth" and SCANNER in report.hot_spots["per_model"]
    scanner = report.hot_spots["per_model"][SCANNER]
    assert all(n <= 1 for n in scanner["per_study"].values()), scanner
    assert SCANNER in report.lesion_classes and set(report.lesion_classes[SCANNER]) == {"truth"}
    # the truth scored as a prediction against itself: none, by construction; the scanner PET: as evaluate says
    ds = open_dataset(data)
    for study in ds.studies:
        items = [ds[i] for i in ds.study_slices(study)]
        truth = np.stack([it["truth"] for it in items]).astype(np.float64)
        real = np.stack([it["target"] for it in items]).astype(np.float64)
        labels = np.stack([it["labels"] for it in items]).astype(np.int64)
        ids = uptake_labels(truth, labels, ds.label_table(study), 4.0)
        uptake = labelled_uptake(truth, labels, *ids, 4.0)
        assert false_positive_hot_spots(truth, uptake, 4.0) == []
        assert len(false_positive_hot_spots(real, uptake, 4.0)) == scanner["per_study"][study]
    lesions = [r for r in _read_csv(tmp_path / "out" / "lesions.csv") if r["model"] == SCANNER]
    assert lesions and all(r["reference"] == "truth" for r in lesions)
    shutil.rmtree(tmp_path / "out")
