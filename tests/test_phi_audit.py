"""No identifier leaves: a study with identifiers planted in the attributes of the DICOM PS3.15 Basic
Application Level Confidentiality Profile (names, IDs, dates and times, UIDs, institution, device serials,
free-text comments, a private tag) and in its folder names goes through prepare, train, translate, evaluate
and report.html; every file they write (datasets, logs, model cards, JSON, CSV, PNG, HTML, NIfTI headers) is
searched for the planted values. Only the synthetic DICOM series keeps the patient's study, on purpose."""

import gzip

import pydicom
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from petsynth.cli import app
from petsynth.phantom import make_torso, write_study

#: Attribute -> planted value. Values hold a character outside base64's alphabet ("-", "^", "_" or a space) so
#: that no compressed volume or embedded picture can contain one by chance.
PLANTED = {
    "PatientName": "Doe^Janet^Q", "PatientID": "MRN-0042-7781", "OtherPatientIDs": "ALT-ID-99",
    "PatientBirthDate": "19470305", "PatientBirthTime": "071500", "PatientAddress": "12 Rue-du-Test, Lyon",
    "PatientTelephoneNumbers": "+33 4 7212 3456", "EthnicGroup": "ETH-GROUP-X", "Occupation": "Test-Pilot",
    "AdditionalPatientHistory": "prior-lymphoma 2019", "PatientComments": "call-daughter first",
    "MedicalRecordLocator": "MRL-5521", "AccessionNumber": "ACC-88123", "StudyID": "STU-4411",
    "StudyDate": "20190704", "ContentDate": "20190705", "StudyTime": "101112",
    "InstitutionName": "Saint-Example Hospital",
    "InstitutionAddress": "1 Test-Avenue, Paris", "InstitutionalDepartmentName": "Nuclear-Med Dept",
    "ReferringPhysicianName": "House^Gregory", "PerformingPhysicianName": "Wilson^James",
    "OperatorsName": "Cuddy^Lisa", "NameOfPhysiciansReadingStudy": "Foreman^Eric",
    "StationName": "PETCT-ROOM_3", "DeviceSerialNumber": "SN-77-0099", "StudyDescription": "WB-PETCT Doe",
    "SeriesDescription": "CT-AC Doe_Janet", "ImageComments": "patient-moved slice", "RequestingPhysician":
    "Chase^Robert", "RequestedProcedureDescription": "FDG-restaging Doe",
}
#: A private tag with free text (private tags are in the profile's scope).
PRIVATE = (0x0009, 0x1010, "LO", "PRIVATE-NOTE_Doe")


def _plant(folder, uids):
    with pydicom.config.disable_value_validation():
        for f in folder.rglob("*.dcm"):
            ds = pydicom.dcmread(f)
            for keyword, value in PLANTED.items():
                setattr(ds, keyword, value)
            ds.private_block(0x0009, "PETSYNTH-TEST", create=True).add_new(0x10, PRIVATE[2], PRIVATE[3])
            ds.StudyInstanceUID = uids["study"]
            ds.FrameOfReferenceUID = uids["frame"]
            ds.save_as(f)


def _written_text(root):
    """Every file under ``root`` (the synthetic DICOM series excluded), gz decompressed, as bytes."""
    for path in sorted(root.rglob("*")):
        if not path.is_file() or "dicom" in path.relative_to(root).parts:
            continue
        data = path.read_bytes()
        yield path, gzip.decompress(data) if path.suffix == ".gz" else data


def test_no_planted_identifier_reaches_any_file_petsynth_writes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "Doe_Janet_MRN-0042-7781"
    for seed in (51, 52):  # two studies: an archive of more than one, at the least cost
        study = write_study(make_torso(seed, preset="tiny"), raw / f"study{seed}", fmt="dicom")
        _plant(study, {"study": generate_uid(), "frame": generate_uid()})
    first = pydicom.dcmread(next(raw.rglob("*.dcm")))
    assert PLANTED["InstitutionName"].encode() in next(raw.rglob("*.dcm")).read_bytes()  # planted for real
    assert first.get((0x0009, 0x1010)) is not None and first.get((0x0009, 0x1010)).value == PRIVATE[3]
    secrets = [*PLANTED.values(), PRIVATE[3], str(first.StudyInstanceUID), str(first.FrameOfReferenceUID),
               str(first.SeriesInstanceUID), str(first.SOPInstanceUID), "Doe_Janet"]
    out = tmp_path / "outputs"
    key = ["--key-file", str(tmp_path / "key")]
    run = lambda *args: CliRunner().invoke(app, [str(a) for a in args])  # noqa: E731
    assert run("prepare", raw, "--out", out / "ds", "--size", "32", "--split", "1,0,0", *key).exit_code == 0
    trained = run("train", "unet", out / "ds", "--out", out / "run", "--steps", "2", "--batch-size", "2",
                  "--set", "train.validate_every=1", "--set", "method_config.unet.features=[4,8,16,32,64,4]")
    assert trained.exit_code == 0, trained.output
    translated = run("translate", "phantom-cpdm", next(raw.iterdir()), "--out", out / "t", "--steps", "1", "--png",
                     "--report")
    assert translated.exit_code == 0, translated.output
    archive = run("translate", "phantom-cpdm", raw, "--out", out / "archive", "--steps", "1", "--no-dicom", *key)
    assert archive.exit_code == 0, archive.output
    evaluated = run("evaluate", out / "run", "--data", out / "ds", "--out", out / "eval", "--split", "all",
                    "--max-slices", "4")
    assert evaluated.exit_code == 0, evaluated.output
    written = list(_written_text(out))
    names = {p.name for p, _ in written}
    assert {"dataset.yaml", "prepare_report.json", "splits.json", "card.yaml", "log.csv", "translate.json",
            "report.html", "mip.png", "batch_report.json", "metrics.csv", "table.md", "evaluation.json"} <= names
    leaks = [(p.relative_to(out), s) for p, data in written for s in secrets if s.encode() in data]
    assert not leaks, leaks
    # the synthetic DICOM series deliberately stays in the patient's study
    synthetic = pydicom.dcmread(next((out / "t" / "dicom").glob("*.dcm")))
    assert str(synthetic.PatientID) == PLANTED["PatientID"]
