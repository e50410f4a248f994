"""The project's own documentation: every file it points to exists, and the worked examples of
docs/formulas.md are what the code computes (the page states the numbers; the code must agree)."""

import math
import re
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from petsynth.data.suv import suv_scale
from petsynth.physics import attenuation_map, hu_to_mu
from petsynth.tasks import PET_WINDOW

ROOT = Path(__file__).resolve().parents[1]
FORMULAS = (ROOT / "docs" / "formulas.md").read_text()


def _documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_file_the_docs_point_to_exists():
    missing = []
    for doc in _documents():
        text = doc.read_text()
        targets = re.findall(r"\]\(([^)#\s]+)", text)  # Markdown links
        targets += re.findall(r"\b((?:docs|benchmarks|configs|tests|petsynth)/[\w./-]+\.(?:md|py|yaml))", text)
        for target in targets:
            if "://" in target:
                continue
            if not ((doc.parent / target).exists() or (ROOT / target).exists()):
                missing.append(f"{doc.name}: {target}")
    assert not missing, missing
    # the README once cited a DESIGN.md that the project does not have
    assert "DESIGN.md" not in (ROOT / "README.md").read_text()


def _stated(pattern: str) -> float:
    match = re.search(pattern, FORMULAS)
    assert match, f"docs/formulas.md no longer states {pattern!r}"
    return float(match.group(1).rstrip("."))  # a number that ends a sentence


def test_the_suv_worked_example_is_what_the_suv_code_computes():
    stated = _stated(r"SUVbw = 5000 \* 70 \* 1000 / \(370e6 \* [0-9.]+\) = ([0-9.]+) g/ml")
    decay = _stated(r"The decay factor is 2\^\(-3600 / 6586.2\) = ([0-9.]+)")
    assert math.isclose(decay, 2 ** (-3600 / 6586.2), abs_tol=5e-5)

    ds = Dataset()  # one BQML instance: injection at 09:00:00, series start at 10:00:00 (3600 s later)
    ds.Units, ds.DecayCorrection, ds.PatientWeight = "BQML", "START", 70
    ds.SeriesDate, ds.SeriesTime, ds.AcquisitionDate, ds.AcquisitionTime = "20260101", "100000", "20260101", "100000"
    radio = Dataset()
    radio.RadionuclideTotalDose, radio.RadionuclideHalfLife = 370e6, 6586.2
    radio.RadiopharmaceuticalStartDateTime = "20260101090000"
    ds.RadiopharmaceuticalInformationSequence = [radio]
    assert math.isclose(5000 * suv_scale(ds).factor, stated, abs_tol=5e-4)


def test_the_attenuation_worked_examples_are_what_the_physics_code_computes():
    water = _stated(r"water \(0 HU\) has mu = 9.6e-5 \* 1000 = ([0-9.]+) cm\^-1")
    bone = _stated(r"1000 HU at 120 kVp has mu = 5.10e-5 \* 2000 \+ 4.71e-2 = ([0-9.]+) cm\^-1")
    for kvp in (80, 120, 140):
        assert math.isclose(float(hu_to_mu(np.array([0.0]), kvp)[0]), water, rel_tol=1e-4)
    assert math.isclose(float(hu_to_mu(np.array([1000.0]), 120)[0]), bone, rel_tol=1e-4)
    transmitted = _stated(r"Water: exp\(-0.096\) =\s+([0-9.]+)")
    assert math.isclose(float(attenuation_map(np.array([0.0]), 120, path_length_cm=1.0)[0]), transmitted,
                        abs_tol=5e-4)


def test_the_pet_transform_on_the_page_is_the_default_one():
    transform = PET_WINDOW.transform()
    assert transform.kind == "log" and (transform.low, transform.high, transform.scale) == (0.0, 20.0, 1.0)
    suv = np.array([0.0, 1.0, 3.0, 20.0])
    page = 2 * np.log(1 + suv / 1.0) / np.log(1 + 20 / 1.0) - 1  # the formula as the page writes it
    assert np.allclose(transform.forward(suv), page)
    share = _stated(r"SUV 0..3 spans ([0-9.]+) of the two network units")
    assert math.isclose(page[2] - page[0], share, abs_tol=5e-3)  # of the 2 units from -1 to 1
