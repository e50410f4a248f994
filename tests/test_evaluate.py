"""`petsynth evaluate`: two tiny models on the tiny phantom dataset; the CSV equals the metric functions on the
same arrays, the Table-4-style Markdown bolds the best and states the relative gap, truth rows for phantoms,
region SUV biases equal numpy on the label masks, regions named by each study's own label table (a hand-made
one too), clear errors, and the CLI end to end."""

import csv
import json
import math
import re
import shutil
from collections import defaultdict

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from petsynth.cli import app
from petsynth.data.store import DatasetError, create_dataset, open_dataset, write_study
from petsynth.evaluate import (EvaluationError, evaluate, label_regions, metric_specs, model_name, relative_gap,
                               select_slices, suv_to_cpdm_stored)
from petsynth.inference import PredictOptions, load_model, predict_dataset, predict_items
from petsynth.methods import build_method
from petsynth.methods.base import MethodError
from petsynth.metrics import mae, psnr, ssim, to_cpdm_scale
from petsynth.train.checkpoint import ModelCard, save_checkpoint

TINY_UNET = {"unet": {"features": [4, 8, 16, 32, 64, 4]}}
OPTIONS = PredictOptions(batch_size=5)  # batches that do not divide the studies
WINDOW = 20.0  # the documented SUV data range (PET window 0..20 SUV)


def _save_unet(path, seed, task="ct2pet", bias=0.0):
    torch.manual_seed(seed)
    method = build_method("unet", TINY_UNET, task=task)
    with torch.no_grad():  # shift the output so the two models differ clearly
        list(method.parameters())[-1].add_(bias)
    card = ModelCard(method="unet", task=task, config=method.config.to_dict(), step=1,
                     intensity={k: t.to_dict() for k, t in method.intensity_transforms().items()})
    return save_checkpoint(path, card, {"model": method.state_dict()})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"run-a": _save_unet(root / "run-a" / "model", 0, bias=-0.8),
            "run-b": _save_unet(root / "run-b" / "model", 3, bias=-0.9)}


@pytest.fixture(scope="module")
def evaluation(tiny_dataset, models, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "out"
    report = evaluate([models["run-a"], models["run-b"].parent], tiny_dataset, out, split="all", options=OPTIONS)
    return report, out


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def predictions(tiny_dataset, models):
    """Independently: per model, the predictions over the whole dataset with predict_dataset, and the arrays."""
    ds = open_dataset(tiny_dataset)
    preds = {name: torch.cat([p for _, p in predict_dataset(load_model(spec, task=ds.task), ds, OPTIONS)])
             for name, spec in models.items()}
    arrays = {k: torch.from_numpy(np.stack([ds[i][k] for i in range(len(ds))]))[:, None]
              for k in ("source", "target", "truth", "labels")}
    studies = [ds[i]["study"] for i in range(len(ds))]
    return preds, arrays, studies


def test_writes_every_file_and_reports_names_not_paths(evaluation, models, tiny_dataset):
    report, out = evaluation
    assert report.models == ["run-a", "run-b"]  # RUN/model and RUN both named after the run folder
    assert report.references == ["real", "truth"] and report.slices == 48 and len(report.studies) == 3
    assert {k: p.name for k, p in report.files.items()} == {
        "metrics": "metrics.csv", "per_slice": "per_slice.csv", "table": "table.md", "figure": "figure.png",
        "settings": "evaluation.json", "report": "report.html", "lesions": "lesions.csv", "hot_spots": "hot_spots.csv"}
    for path in report.files.values():
        assert path.parent == out and path.is_file() and path.stat().st_size > 0
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "evaluation.json").read_text()
    settings = json.loads(text)
    assert str(tiny_dataset) not in text and str(models["run-a"]) not in text and "/" not in json.dumps(
        settings["models"])
    assert [m["name"] for m in settings["models"]] == ["run-a", "run-b"]
    page = (out / "report.html").read_text()
    assert str(tiny_dataset) not in page and str(models["run-a"].parent) not in page  # paths hold "-": not base64
    assert "not for diagnosis" in page and "run-a" in page and "data:image/png;base64," in page
    assert settings["models"][0]["method"] == "unet" and settings["models"][0]["step"] == 1
    assert settings["slices_evaluated"] == 48 and sum(settings["studies"].values()) == 48
    assert settings["suv_window"] == [0.0, 20.0] and set(settings["versions"]) >= {"petsynth", "torch"}
    # 32 px slices: MS-SSIM and VIF are left out and the outputs say why
    assert {s.key for s in report.metrics} == {"mae_suv", "psnr_suv", "ssim_suv", "nrmse_suv", "mae_cpdm", "ssim_cpdm",
                                               "psnr_cpdm"}
    table = (out / "table.md").read_text()
    assert "MS-SSIM left out" in table and "VIF left out" in table and "APPROXIMATION" in table
    assert "20 SUV" in table and "32767" in table
    assert len(_read_csv(out / "per_slice.csv")) == 2 * 2 * 48  # models x references x slices


@pytest.mark.parametrize("reference", ["real", "truth"])
def test_metrics_csv_equals_the_metric_functions(evaluation, predictions, reference):
    _, out = evaluation
    preds, arrays, studies = predictions
    ref = arrays["target" if reference == "real" else "truth"]
    rows = {(r["model"], r["study"], r["convention"], r["metric"]): r for r in _read_csv(out / "metrics.csv")
            if r["reference"] == reference and r["region"] == ""}
    stored = lambda x: 32767 * x.double().clamp(0, WINDOW) / WINDOW  # noqa: E731  the paper-scale mapping
    for model, pred in preds.items():
        direct = {
            ("suv", "MAE"): mae(pred, ref, data_range=WINDOW),
            ("suv", "PSNR"): psnr(pred, ref, data_range=WINDOW),
            ("suv", "SSIM"): ssim(pred, ref, data_range=WINDOW),
            ("cpdm", "MAE"): mae(stored(pred), stored(ref), data_range=32767),
            ("cpdm", "SSIM"): ssim(to_cpdm_scale(stored(pred)), to_cpdm_scale(stored(ref)), data_range=1.0,
                                   convention="cpdm"),
            ("cpdm", "PSNR"): psnr(to_cpdm_scale(stored(pred)), to_cpdm_scale(stored(ref)), data_range=1.0),
        }
        for (convention, metric), values in direct.items():
            values = values.numpy()
            for study in [*dict.fromkeys(studies), "overall"]:
                pick = np.array([study in ("overall", s) for s in studies])
                row = rows[(model, study, convention, metric)]
                assert float(row["mean"]) == pytest.approx(values[pick].mean(), rel=1e-9), (model, study, metric)
                assert float(row["std"]) == pytest.approx(values[pick].std(), rel=1e-6, abs=1e-12)
                assert int(row["n"]) == pick.sum()
    assert suv_to_cpdm_stored(torch.tensor([-1.0, 10.0, 25.0])).tolist() == [0.0, 32767 / 2, 32767.0]


def test_truth_rows_differ_from_real_rows(evaluation):
    report, out = evaluation
    rows = _read_csv(out / "metrics.csv")
    assert {r["reference"] for r in rows} == {"real", "truth"}
    for model in report.models:
        assert report.overall[model]["truth"]["mae_suv"] != report.overall[model]["real"]["mae_suv"]
    assert "noise-free phantom truth" in (out / "table.md").read_text()


def _table(markdown, heading):
    lines = markdown.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("## ") and heading in line) + 2
    block = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        block.append([c.strip() for c in line.strip("|").split("|")])
    return block[0], block[2:]  # header, rows (after the |---| line)


@pytest.mark.parametrize("heading", ["real (reconstructed) PET: SUV convention",
                                     "real (reconstructed) PET: CPDM paper convention",
                                     "noise-free phantom truth: SUV convention"])
def test_table_bolds_the_best_and_states_the_relative_gap(evaluation, heading):
    report, out = evaluation
    header, rows = _table((out / "table.md").read_text(), heading)
    reference = "real" if "real" in heading else "truth"
    convention = "cpdm" if "CPDM" in heading else "suv"
    if convention == "cpdm":
        assert [h.split(" ")[0] for h in header[1:]] == ["MAE", "SSIM", "PSNR"]  # the order of the paper's Table 4
    overall = {(r["model"], r["metric"]): float(r["mean"]) for r in _read_csv(out / "metrics.csv")
               if r["reference"] == reference and r["study"] == "overall" and r["region"] == ""
               and r["convention"] == convention}
    by_model = {row[0]: row[1:] for row in rows}
    assert set(by_model) == {"run-a", "run-b", "Diff."}
    for col, title in enumerate(header[1:]):
        metric, higher = title.split(" ")[0], title.endswith("↑")
        values = {m: overall[(m, metric)] for m in ("run-a", "run-b")}
        best = max(values, key=values.get) if higher else min(values, key=values.get)
        second = next(m for m in values if m != best)
        assert by_model[best][col].startswith("**") and not by_model[second][col].startswith("**")
        gap = (values[best] - values[second]) / values[second]  # the paper's Diff.: best vs second best
        assert by_model["Diff."][col] == f"{100 * gap:+.2f}%"
        assert (gap < 0) == (not higher) or gap == 0


def test_region_biases_equal_numpy_on_the_label_masks(evaluation, predictions, tiny_dataset):
    report, out = evaluation
    preds, arrays, studies = predictions
    rows = {(r["model"], r["reference"], r["study"], r["region"], r["metric"]): r
            for r in _read_csv(out / "metrics.csv") if r["region"]}
    labels = arrays["labels"].numpy()[:, 0]
    study_of = np.array(studies)
    checked = defaultdict(int)
    for model, pred in preds.items():
        p = pred.numpy()[:, 0].astype(np.float64)
        for reference, key in (("real", "target"), ("truth", "truth")):
            r = arrays[key].numpy()[:, 0].astype(np.float64)
            for region, mask in (("lesions", labels >= 100), ("myocardium", labels == 4), ("lung", labels == 3),
                                 ("high_uptake", r >= 2.5)):
                per_study = []
                for study in dict.fromkeys(studies):
                    m = mask & (study_of == study)[:, None, None]
                    if not m.any():
                        assert (model, reference, study, region, "suvmean_bias") not in rows
                        continue
                    mean_p, mean_r, max_p, max_r = p[m].mean(), r[m].mean(), p[m].max(), r[m].max()
                    want = {"suvmean_ref": mean_r, "suvmean_pred": mean_p, "suvmean_bias": mean_p - mean_r,
                            "suvmean_rel_bias": (mean_p - mean_r) / mean_r, "suvmax_ref": max_r,
                            "suvmax_pred": max_p, "suvmax_bias": max_p - max_r,
                            "suvmax_rel_bias": (max_p - max_r) / max_r}
                    for field, value in want.items():
                        row = rows[(model, reference, study, region, field)]
                        assert float(row["mean"]) == pytest.approx(value, rel=1e-6, abs=1e-9), (region, field)
                    assert int(rows[(model, reference, study, region, "suvmean_ref")]["n"]) == m.sum()
                    per_study.append(want["suvmax_rel_bias"])
                    checked[region] += 1
                overall = rows[(model, reference, "overall", region, "suvmax_rel_bias")]
                assert float(overall["mean"]) == pytest.approx(np.mean(per_study), rel=1e-6)
                assert int(overall["n"]) == len(per_study)
                assert report.regions[model][reference][region]["suvmax_rel_bias"] == pytest.approx(
                    np.mean(per_study), rel=1e-6)
    assert checked["lesions"] >= 2 and checked["high_uptake"] >= 2  # lesions in two of the three studies
    _, bias_rows = _table((out / "table.md").read_text(), "SUVmean / SUVmax bias against the real")
    assert [row[0] for row in bias_rows][0] == "lesions" and "high_uptake" in [row[0] for row in bias_rows]
    # every organ of the studies' tables found in the slices is a region, the main organs first, then the others
    ds = open_dataset(tiny_dataset)
    found = {}
    for study in ds.studies:
        seen = set(np.unique(labels[study_of == study]).tolist())
        for row in ds.label_table(study):
            if row["label"] in seen:
                found.setdefault("lesions" if row["kind"] == "lesion" else row["name"], set()).add(row["label"])
    order = [r for r in ("lesions", "brain", "grey_matter", "white_matter", "myocardium", "blood_pool", "lung",
                         "liver", "spleen", "kidney", "bladder") if r in found]
    order += sorted((r for r in found if r not in order), key=lambda r: min(found[r]))  # phantom table order
    settings = json.loads((out / "evaluation.json").read_text())
    assert list(settings["regions"]) == [*order, "high_uptake"] and {"lesions", "lung", "fat", "muscle"} <= set(order)
    assert {r: set(v) for r, v in settings["regions"].items() if r != "high_uptake"} == found
    assert [row[0] for row in bias_rows] == [*order, "high_uptake"]


def test_any_labelled_dataset_is_scored_by_the_names_of_its_own_label_tables(models, tmp_path):
    """Hand-made tables, not the phantom's: "widget" is label 3 in one study and 5 in another, lesion rows of any
    label form "lesions", unnamed labels and a study without a table give no region."""
    root = create_dataset(tmp_path / "ds", task="ct2pet", size=32)
    labels = np.zeros((2, 32, 32), np.uint8)
    labels[:, 4:12, 4:20] = 3
    labels[:, 14:18, 4:20] = 5
    labels[0, 20:24, 4:8], labels[1, 20:24, 10:14] = 7, 8
    labels[:, 26:30, 4:20] = 9  # in the slices, but in no table
    target = np.full((2, 32, 32), 0.5, np.float32)
    target[labels == 3], target[labels == 5], target[labels == 7], target[labels == 8] = 4.0, 6.0, 9.0, 12.0
    source = np.where(labels > 0, 40.0, -1000.0).astype(np.float32)
    tables = {"sa": [{"label": 3, "name": "widget", "kind": "organ"}, {"label": 7, "name": "blob", "kind": "lesion"},
                     {"label": 8, "name": "blob2", "kind": "lesion"}, {"label": 11, "name": "absent", "kind": "organ"}],
              "sb": [{"label": 5, "name": "widget", "kind": "organ"}, {"label": 3, "name": "gizmo", "kind": "organ"}],
              "sc": None}  # labels without a table (a dataset prepared before tables were stored)
    for study, table in tables.items():
        meta = {"spacing_mm": [4.0, 4.0], "kvp": 120.0, "units": "GML"}
        write_study(root, study, {"source": source, "target": target, "labels": labels},
                    {"index": [0, 1], "z_mm": [0.0, 3.0]}, meta if table is None else {**meta, "label_table": table})
    assert label_regions(tables["sa"]) == {"widget": [3], "lesions": [7, 8], "absent": [11]}
    report = evaluate({"a": models["run-a"]}, root, tmp_path / "out", split="all", options=OPTIONS)
    settings = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert list(settings["regions"]) == ["lesions", "widget", "gizmo", "high_uptake"]
    assert settings["regions"]["widget"] == [3, 5] and settings["regions"]["lesions"] == [7, 8]
    ds = open_dataset(root)
    pred = torch.cat([p for _, p in predict_items(load_model(models["run-a"], task="ct2pet"),
                                                  [ds[i] for i in range(len(ds))], options=OPTIONS)])
    pred = pred[:, 0].double().numpy().reshape(3, 2, 32, 32)  # studies sa, sb, sc
    rows = {(r["study"], r["region"], r["metric"]): float(r["mean"])
            for r in _read_csv(tmp_path / "out" / "metrics.csv") if r["reference"] == "real" and r["region"]}
    want = {("sa", "widget"): pred[0][labels == 3].mean() - 4.0, ("sb", "widget"): pred[1][labels == 5].mean() - 6.0,
            ("sb", "gizmo"): pred[1][labels == 3].mean() - 4.0,
            ("sa", "lesions"): pred[0][(labels == 7) | (labels == 8)].mean() - (9.0 * 16 + 12.0 * 16) / 32}
    for (study, region), bias in want.items():
        assert rows[(study, region, "suvmean_bias")] == pytest.approx(bias, rel=1e-6, abs=1e-9), (study, region)
    assert rows[("overall", "widget", "suvmean_bias")] == pytest.approx(
        (want[("sa", "widget")] + want[("sb", "widget")]) / 2, rel=1e-6)
    assert report.regions["a"]["real"]["widget"]["suvmean_ref"] == pytest.approx(5.0)  # (4 + 6) / 2
    assert rows[("sa", "widget", "suvmax_ref")] == 4.0 and ("sb", "lesions", "suvmean_bias") not in rows
    assert {study for study, region, _ in rows
            if region not in ("high_uptake", "false_positive_hot_spots")} == {"sa", "sb", "overall"}
    assert ("sc", "high_uptake", "suvmean_bias") in rows


def test_old_datasets_without_label_tables_score_the_high_uptake_region_only(models, tmp_path):
    root = create_dataset(tmp_path / "ds", task="ct2pet", size=32)
    labels = np.zeros((2, 32, 32), np.uint8)
    labels[:, 4:12, 4:20] = 6
    target = np.where(labels > 0, 3.0, 0.5).astype(np.float32)
    write_study(root, "s", {"source": np.where(labels > 0, 40.0, -1000.0), "target": target, "labels": labels},
                {"index": [0, 1], "z_mm": [0.0, 3.0]}, {"spacing_mm": [4.0, 4.0], "kvp": 120.0})
    report = evaluate({"a": models["run-a"]}, root, tmp_path / "out", split="all", options=OPTIONS)
    assert list(report.regions["a"]["real"]) == ["high_uptake"]
    assert any("label table" in note for note in report.notes)


def test_max_slices_takes_the_same_evenly_spaced_slices_for_every_model(tiny_dataset, models, tmp_path):
    assert select_slices(48, 5) == [0, 12, 24, 35, 47] and select_slices(4, 10) == [0, 1, 2, 3]
    report = evaluate({"a": models["run-a"], "b": models["run-b"]}, tiny_dataset, tmp_path / "o", split="all",
                      options=OPTIONS, max_slices=5)
    rows = _read_csv(tmp_path / "o" / "per_slice.csv")
    ds = open_dataset(tiny_dataset)
    want = [(ds[i]["study"], str(ds[i]["index"])) for i in (0, 12, 24, 35, 47)]
    for model in ("a", "b"):
        assert [(r["study"], r["slice"]) for r in rows if r["model"] == model and r["reference"] == "real"] == want
    assert report.slices == 5 and json.loads((tmp_path / "o" / "evaluation.json").read_text())["max_slices"] == 5


def test_clear_errors_and_nothing_written(tiny_dataset, models, tmp_path):
    other = shutil.copytree(models["run-a"], tmp_path / "mr" / "model")
    card = yaml.safe_load((other / "card.yaml").read_text())
    card["task"] = "mr2pet"
    (other / "card.yaml").write_text(yaml.safe_dump(card))
    out = tmp_path / "out"
    with pytest.raises(MethodError, match="mr2pet.*not 'ct2pet'"):
        evaluate([models["run-a"], other], tiny_dataset, out)
    empty = shutil.copytree(tiny_dataset, tmp_path / "empty")
    (empty / "splits.json").write_text(json.dumps({s: "train" for s in open_dataset(empty).studies}))
    with pytest.raises(EvaluationError, match="'test' split .* has no slices"):
        evaluate([models["run-a"]], empty, out)
    with pytest.raises(DatasetError, match="not a petsynth dataset"):
        evaluate([models["run-a"]], tmp_path / "mr", out)
    with pytest.raises(EvaluationError, match="unknown split"):
        evaluate([models["run-a"]], tiny_dataset, out, split="tset")
    with pytest.raises(EvaluationError, match="no models"):
        evaluate([], tiny_dataset, out)
    with pytest.raises(EvaluationError, match="no model takes the sampler option 'steps'.*run-a: none"):
        evaluate({"run-a": models["run-a"]}, tiny_dataset, out, options=PredictOptions(steps=5))
    with pytest.raises(EvaluationError, match="given twice"):
        evaluate([models["run-a"]], tiny_dataset, out, options=PredictOptions(steps=5, sampler={"steps": 4}))
    assert not out.exists()


def test_metric_choice_follows_the_slice_size_and_gap_rules():
    keys = lambda size: {s.key for s in metric_specs(size, use_lpips=False)[0]}  # noqa: E731
    assert "vif_suv" not in keys(40) and "vif_suv" in keys(41) and "ms_ssim_suv" not in keys(160)
    assert {"vif_suv", "ms_ssim_suv"} <= keys(161)
    assert {"lpips_suv", "lpips_cpdm"} <= {s.key for s in metric_specs(64, use_lpips=True)[0]}
    assert relative_gap({"a": 2.0, "b": 4.0}, higher_is_better=False) == (["a"], -0.5)
    assert relative_gap({"a": 2.0, "b": 2.0}, higher_is_better=True) == (["a", "b"], 0.0)
    assert relative_gap({"a": 2.0, "b": math.nan}, higher_is_better=True) == (["a"], None)
    assert model_name("phantom-cpdm") == "phantom-cpdm"


def test_cli_evaluates_end_to_end(tiny_dataset, models, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["evaluate", str(models["run-a"]), str(models["run-b"].parent), "--data",
                                      str(tiny_dataset), "--out", str(out), "--max-slices", "6", "--batch-size", "4",
                                      "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "run-a" in result.output and "run-b" in result.output and "table.md" in result.output
    assert re.search(r"MAE", result.output) and "(paper)" in result.output and "VIF left out" in result.output
    rows = _read_csv(out / "per_slice.csv")
    assert len(rows) == 2 * 2 * 6 and {r["study"] for r in rows} == set(open_dataset(tiny_dataset, "test").studies)
    bad = CliRunner().invoke(app, ["evaluate", str(models["run-a"]), "--data", str(tmp_path), "--out",
                                   str(tmp_path / "x")])
    assert bad.exit_code == 1 and "error:" in bad.output and "not a petsynth dataset" in " ".join(bad.output.split())


def test_lpips_is_reported_when_the_user_supplied_its_weights(tiny_dataset, models, tmp_path, monkeypatch):
    from petsynth.metrics import LPIPS, lpips, perceptual

    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(perceptual, "_lpips_package_dir", lambda: None)  # ignore an installed lpips
    torch.manual_seed(0)
    net = LPIPS("alex", pretrained=False)  # random weights in the users' file formats: the wiring only
    torch.save({f"features.{k}": v for k, v in net.features.state_dict().items()}, hub / "alexnet-owt-7be5be79.pth")
    torch.save({f"lin{k}.model.1.weight": h.weight.detach().abs() for k, h in enumerate(net.heads)}, hub / "alex.pth")
    report = evaluate([models["run-a"]], tiny_dataset, tmp_path / "o", options=OPTIONS, max_slices=3)
    assert {"lpips_suv", "lpips_cpdm"} <= {s.key for s in report.metrics}
    ds = open_dataset(tiny_dataset, "test")
    method = load_model(models["run-a"], task=ds.task)
    picked = [ds[i] for i in select_slices(len(ds), 3)]
    pred = torch.cat([p for _, p in predict_items(method, picked, options=OPTIONS)])
    target = torch.from_numpy(np.stack([it["target"] for it in picked]))[:, None]
    want = lpips(pred, target, data_range=WINDOW, net="alex").mean().item()
    assert report.overall["run-a"]["real"]["lpips_suv"] == pytest.approx(want, rel=1e-6)
    assert "LPIPS" in (tmp_path / "o" / "table.md").read_text().split("## Conventions")[0]


def _save_unet_at(path, spacing_mm, size=32):
    """A tiny U-Net whose card says it was trained on ``size`` px slices of ``spacing_mm`` mm."""
    torch.manual_seed(1)
    method = build_method("unet", TINY_UNET, task="ct2pet")
    card = ModelCard(method="unet", task="ct2pet", config=method.config.to_dict(), step=1,
                     intensity={k: t.to_dict() for k, t in method.intensity_transforms().items()},
                     data={"size": size, "spacing_mm": [spacing_mm, spacing_mm]})
    return save_checkpoint(path, card, {"model": method.state_dict()})


def test_a_model_trained_at_another_pixel_spacing_sees_the_slices_at_its_own_scale(tiny_dataset, tmp_path):
    ds = open_dataset(tiny_dataset, "test")
    data_mm = float(np.mean(ds.study_meta(ds.studies[0])["spacing_mm"]))
    assert data_mm > 10  # tiny phantoms prepared at 32 px: coarse pixels
    model = _save_unet_at(tmp_path / "fine" / "model", spacing_mm=data_mm / 4)
    report = evaluate([model], tiny_dataset, tmp_path / "o", options=OPTIONS, max_slices=2)
    assert any("trained on pixels of" in n and "resized back" in n for n in report.notes)
    assert "trained on pixels of" in (tmp_path / "o" / "table.md").read_text()

    # independently: the first evaluated slice, enlarged 4x (to 128 px, on a 128 px canvas), predicted, shrunk back
    item = ds[select_slices(len(ds), 2)[0]]
    big = torch.nn.functional.interpolate(torch.from_numpy(item["source"])[None, None], size=(128, 128),
                                          mode="bilinear", align_corners=False)[0, 0].numpy()
    method = load_model(model, task="ct2pet")
    (_, pred), = predict_items(method, [{**item, "source": big}], options=OPTIONS)
    back = torch.nn.functional.interpolate(pred, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    want = mae(back.double(), torch.from_numpy(item["target"])[None, None].double(), data_range=WINDOW).item()
    rows = [r for r in _read_csv(tmp_path / "o" / "per_slice.csv") if r["reference"] == "real"]
    assert float(rows[0]["mae_suv"]) == pytest.approx(want, rel=1e-5)

    same = _save_unet_at(tmp_path / "same" / "model", spacing_mm=data_mm)  # at its own scale: as stored
    plain = evaluate([same], tiny_dataset, tmp_path / "p", options=OPTIONS, max_slices=2)
    assert not any("trained on pixels of" in n for n in plain.notes)


def test_cli_tables_fit_80_columns_and_bundled_models_are_named(tiny_dataset, tmp_path):
    result = CliRunner().invoke(app, ["evaluate", "phantom-cpdm", "--data", str(tiny_dataset), "--out",
                                      str(tmp_path / "o"), "--max-slices", "2", "--steps", "1", "--threads", "1"],
                                env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "…" not in result.output and max(len(line) for line in result.output.splitlines()) <= 80
    text = " ".join(result.output.split())
    for label in ("MAE", "PSNR", "SSIM", "(paper)"):
        assert label in text
    assert "phantom-cpdm is bundled with petsynth and knows digital phantoms only" in text
    spacing = load_model("phantom-cpdm").card.data["spacing_mm"][0]
    assert f"trained on pixels of {spacing:.3g} mm" in text  # the bundled model's scale, not the 32 px slices'
