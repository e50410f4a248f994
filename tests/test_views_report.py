"""Pictures a PET reader expects: views in the radiological orientation, MIPs, fused slices, and report.html,
which carries no patient identifier and is checked in a real (headless) browser where one is installed."""

import base64
import gzip
import io
import json
import re
import shutil
import zlib

import numpy as np
import pydicom
import pytest
from matplotlib import colormaps
from PIL import Image

from petsynth.data.geometry import Geometry
from petsynth.io import views
from petsynth.io.nifti import read_nifti
from petsynth.phantom import make_torso, write_study
from petsynth.translation import translate

#: LPS directions: (i, j, k) along (L, P, S), and the same grid with every axis reversed.
AXIAL = Geometry(shape=(6, 5, 4), spacing=(3.0, 2.0, 1.0), origin=(0.0, 0.0, 0.0))
REVERSED = Geometry(shape=(6, 5, 4), spacing=(3.0, 2.0, 1.0), origin=(0.0, 0.0, 0.0),
                    direction=(-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0))


@pytest.mark.parametrize("geometry", [AXIAL, REVERSED], ids=["axial", "reversed"])
def test_display_order_puts_head_front_and_patient_right_first(geometry):
    nz, ny, nx = geometry.shape
    ids = np.arange(nz * ny * nx).reshape(geometry.shape)
    c, spacing = views.canonical(ids, geometry)
    k, j, i = np.unravel_index(ids, geometry.shape)
    world = geometry.index_to_world(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(float))
    x, y, z = (world[:, n].reshape(geometry.shape) for n in range(3))  # L, P, S in mm
    first = np.unravel_index(np.flatnonzero(ids == c[0, 0, 0])[0], geometry.shape)
    assert z[first] == z.max() and y[first] == y.min() and x[first] == x.min()  # superior, anterior, right
    last = np.unravel_index(np.flatnonzero(ids == c[-1, -1, -1])[0], geometry.shape)
    assert z[last] == z.min() and y[last] == y.max() and x[last] == x.max()
    assert spacing == (3.0, 2.0, 1.0)
    assert [views.plane_size(geometry, p) for p in views.PLANES] == [nz, ny, nx]


def test_coronal_mip_is_the_maximum_front_to_back_with_the_head_on_top():
    rng = np.random.default_rng(0)
    volume = rng.random(AXIAL.shape)
    view, aspect = views.mip(volume, AXIAL)
    assert np.array_equal(view, volume.max(axis=1)[::-1])  # k ascends toward the head: flipped
    assert aspect == 3.0  # slice spacing / column spacing
    axial, _ = views.plane(volume, AXIAL, "axial", 0)
    assert np.array_equal(axial, volume[-1])  # display slice 0 is the most superior
    assert views.display_index(AXIAL, "axial", AXIAL.shape[0] - 1) == 0


def test_fusion_keeps_the_anatomy_where_there_is_no_uptake_and_shows_hot_where_there_is():
    ct = np.array([[40.0, 240.0]])
    pet = np.array([[0.0, 20.0]])
    rgb = views.fuse(ct, pet, anatomy_window=(40.0, 400.0), pet_max=8.0, opacity=0.7)
    assert np.allclose(rgb[0, 0], 0.5)  # the window's level is mid grey; no PET there
    grey = min(1.0, (240 - (40 - 200)) / 400)
    assert np.allclose(rgb[0, 1], grey * 0.3 + np.asarray(colormaps["hot"](1.0)[:3]) * 0.7)


def test_crop_to_keeps_world_coordinates():
    volume = np.zeros(AXIAL.shape)
    volume[:, 2:4, 1:3] = 1
    (cut,), box = views.crop_to(volume > 0, AXIAL, [volume], margin=0)
    assert cut.shape == (6, 2, 2) and cut.all()
    assert np.allclose(box.index_to_world(np.array([[0.0, 0.0, 0.0]])),
                       AXIAL.index_to_world(np.array([[1.0, 2.0, 0.0]])))


#: Identifiers planted in the CT's headers and in the folder names (characters outside base64's alphabet, so
#: that no compressed volume can contain them by chance).
PLANTED = {"PatientName": "Doe^Jane", "PatientID": "MRN-4417-2209", "PatientBirthDate": "1961-02-03",
           "InstitutionName": "Saint-Example Hospital", "ReferringPhysicianName": "House^Gregory",
           "AccessionNumber": "ACC-99887766", "StudyDescription": "PET-CT of Doe-Jane"}


@pytest.fixture(scope="module")
def translated(tmp_path_factory):
    root = tmp_path_factory.mktemp("phi") / "Doe_Jane_MRN-4417-2209"
    study = write_study(make_torso(7, preset="tiny"), root / "study", fmt="dicom")
    with pydicom.config.disable_value_validation():
        for f in (study / "CT").glob("*.dcm"):
            ds = pydicom.dcmread(f)
            for keyword, value in PLANTED.items():
                setattr(ds, keyword, value)
            ds.save_as(f)
    return translate("phantom-cpdm", study / "CT", root.parent / "out", steps=1, png=True, report=True)


def _text_of(path):
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def test_no_identifier_leaves_in_report_pictures_or_summary(translated):
    out = translated.out_dir
    written = [p for p in out.rglob("*") if p.is_file() and "dicom" not in p.relative_to(out).parts]
    assert {"report.html", "translate.json", "mip.png", "fused.png", "slices.png"} <= {p.name for p in written}
    for path in written:
        data = _text_of(path)
        for value in (*PLANTED.values(), "Doe_Jane", "MRN-4417-2209"):
            assert value.encode() not in data, (path.name, value)
    # the DICOM series deliberately stays in the patient's study
    assert str(pydicom.dcmread(next((out / "dicom").glob("*.dcm"))).PatientID) == PLANTED["PatientID"]


def _report_data(path):
    html = path.read_text()
    match = re.search(r'<script id="petsynth-data" type="application/json">(.*?)</script>', html, re.S)
    return json.loads(match.group(1).replace("<\\/", "</"))


def test_the_report_carries_the_synthetic_pet_in_suv(translated):
    data = _report_data(translated.files["report"])
    raw = np.frombuffer(zlib.decompress(base64.b64decode(data["volumes"]["synthetic"])), dtype="<u2")
    shown = raw.reshape(data["shape"]).astype(np.float64) / data["valueScale"]
    suv, affine = read_nifti(translated.files["nifti"])
    grid = Geometry.from_affine(suv.shape, affine)
    (cut,), box = views.crop_to(suv > 0, grid, [suv])
    expected, spacing = views.canonical(cut, box)
    assert shown.shape == expected.shape and np.abs(shown - expected).max() <= 0.5 / data["valueScale"] + 1e-6
    assert np.allclose(data["spacing"], spacing)
    ct = np.frombuffer(zlib.decompress(base64.b64decode(data["volumes"]["anatomy"])), dtype="<u2")
    assert data["anatomyKind"] == "ct" and ct.min() < 100 <= 1024 < ct.max()  # air (HU + 1024 near 0) and tissue


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]


def _canvas_pixels(page, panel):
    return np.asarray(Image.open(io.BytesIO(page.locator(f"#c-{panel}").screenshot())).convert("L"), dtype=float)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed: `apt-get install chromium` "
                    "(Debian/Ubuntu) to check report.html in a real browser")
def test_the_report_opens_from_disk_in_a_browser_and_its_slider_moves_the_slice(translated):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (a test extra) to drive "
                                   "the browser; it uses the installed Chromium, never downloads one")
    url = translated.files["report"].resolve().as_uri()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url)
            page.wait_for_function("document.body.dataset.rendered !== undefined", timeout=30000)
            first = page.evaluate("document.body.dataset.rendered")
            ct, pet = _canvas_pixels(page, "anatomy"), _canvas_pixels(page, "synthetic")
            assert ct.std() > 5 and pet.std() > 1  # the viewer draws images, not blank canvases
            page.focus("#slice")
            page.keyboard.press("Home")  # the first axial slice (the head end): another slice than the middle
            page.wait_for_function(f"document.body.dataset.rendered !== '{first}'")
            assert page.evaluate("document.body.dataset.rendered") == "axial:0"
            assert np.abs(_canvas_pixels(page, "anatomy") - ct).mean() > 1  # the picture changed with it
            page.check("input[value=coronal]")
            page.wait_for_function("document.body.dataset.rendered.startsWith('coronal')")
            assert not [u for u in requests if not u.startswith(("file:", "data:", "blob:"))]  # no network
        finally:
            browser.close()
