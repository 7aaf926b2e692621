"""Retrieval that cannot be abused, tried by a hostile or careless workstation and by a
modality's correction: unique keys only, destinations bound to their owners, one copy per
SOP instance after a correction, Orthanc refusing forged objects, the egress gate."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pydicom
import requests

from gateway.original import dataset_bytes
from testkit import synthetic
from testkit.localstack import ORTHANC_USER, GatewayProcess, OrthancServer, free_port, run_cli, storescu
from tests.conftest import encode, write_study
from tests.integration.conftest import wait_for

ENV = dict(os.environ, TCP_NODELAY="1")
ROE = synthetic.Identity(patient_name="ROE^RICHARD", patient_id="PID-2", accession="ACC2")


def _stack(tmp_path: Path, orthanc: OrthancServer, **workstation: object) -> tuple[GatewayProcess, dict[str, int]]:
    ports = {"WS_RESTORE": free_port(), "WS_PSEUDO": free_port()}
    retrieval = {
        "workstations": [{"ae_title": "WS_RESTORE", "policy": "restore", **workstation},
                         {"ae_title": "WS_PSEUDO", "policy": "pseudonymized"}],
        "destinations": [{"ae_title": ae, "host": "127.0.0.1", "port": port, "owners": [ae], "allow_cleartext_originals": True}
                         for ae, port in ports.items()],
    }
    return GatewayProcess(tmp_path / "gateway", orthanc, extra={"retrieval": retrieval}).start(), ports


def move(gateway: GatewayProcess, out: Path, calling: str, port: int, dest: str, *keys: str,
         model: str = "-S") -> tuple[list[pydicom.Dataset], str]:
    out.mkdir(parents=True, exist_ok=True)
    args = ["movescu", "-v", model, "-aet", calling, "-aec", "GATEWAY", "-aem", dest, "--port", str(port),
            "-od", str(out)]
    for k in keys:
        args += ["-k", k]
    result = subprocess.run([*args, "127.0.0.1", str(gateway.port)], capture_output=True, text=True, env=ENV,
                            timeout=300)
    return [pydicom.dcmread(p) for p in sorted(out.iterdir())], result.stdout + result.stderr


def find(gateway: GatewayProcess, out: Path, *keys: str, model: str = "-S") -> list[pydicom.Dataset]:
    out.mkdir(parents=True, exist_ok=True)
    args = ["findscu", model, "-X", "-od", str(out), "-aet", "WS_RESTORE", "-aec", "GATEWAY"]
    for k in keys:
        args += ["-k", k]
    subprocess.run([*args, "127.0.0.1", str(gateway.port)], capture_output=True, text=True, env=ENV, timeout=120)
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def test_retrieval_names_its_studies_goes_to_its_owners_and_sends_only_what_the_gateway_made(
        tmp_path: Path, orthanc: OrthancServer) -> None:
    gateway, ports = _stack(tmp_path, orthanc, max_studies_per_retrieve=1)
    try:
        jane = write_study(tmp_path / "jane", (3, 2), size=32)
        roe = write_study(tmp_path / "roe", (2,), size=32, identity=ROE)
        storescu(gateway.port, [tmp_path / "jane", tmp_path / "roe"])
        wait_for(lambda: "forwarded    7" in gateway.status())
        jane_study, roe_study = (str(pydicom.dcmread(f[0]).StudyInstanceUID) for f in (jane, roe))
        restore_port = ports["WS_RESTORE"]

        # names, empty keys and wildcards are no unique keys: refused, nothing delivered
        for n, keys in enumerate([("QueryRetrieveLevel=STUDY", "PatientName=ROE*"),
                                  ("QueryRetrieveLevel=STUDY", "StudyInstanceUID="),
                                  ("QueryRetrieveLevel=STUDY", "StudyInstanceUID=*"),
                                  ("QueryRetrieveLevel=SERIES", f"StudyInstanceUID={jane_study}")]):
            got, output = move(gateway, tmp_path / f"bad{n}", "WS_RESTORE", restore_port, "WS_RESTORE", *keys)
            assert got == [] and "DataSetDoesNotMatchSOPClass" in output, output[-500:]
            assert "(Pending)" not in output  # a refused request announces no sub-operations
        # Patient Root needs the Patient ID above the study
        got, output = move(gateway, tmp_path / "noid", "WS_RESTORE", restore_port, "WS_RESTORE",
                           "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={jane_study}", model="-P")
        assert got == [] and "DataSetDoesNotMatchSOPClass" in output
        got, _ = move(gateway, tmp_path / "pr", "WS_RESTORE", restore_port, "WS_RESTORE", "QueryRetrieveLevel=STUDY",
                      f"PatientID={ROE.patient_id}", f"StudyInstanceUID={roe_study}", model="-P")
        assert sorted(str(ds.PatientName) for ds in got) == [ROE.patient_name] * 2
        # two studies named where one is the ceiling: refused
        got, output = move(gateway, tmp_path / "many", "WS_RESTORE", restore_port, "WS_RESTORE",
                           "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={jane_study}\\{roe_study}")
        assert got == [] and "Failed" in output and "(Pending)" not in output
        # one named study comes back, and only that one
        got, _ = move(gateway, tmp_path / "one", "WS_RESTORE", restore_port, "WS_RESTORE",
                      "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={roe_study}")
        assert {str(ds.StudyInstanceUID) for ds in got} == {roe_study} and len(got) == 2

        # a restore workstation moving to the pseudonymized workstation's destination: no originals
        got, _ = move(gateway, tmp_path / "cross", "WS_RESTORE", ports["WS_PSEUDO"], "WS_PSEUDO",
                      "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={roe_study}")
        assert got == []  # the original UID names nothing in what Orthanc holds
        pseudo_study = str(pydicom.dcmread(io.BytesIO(orthanc.get(f"instances/{orthanc.get('instances')[0]}/file")))
                           .StudyInstanceUID)
        got, _ = move(gateway, tmp_path / "cross2", "WS_RESTORE", ports["WS_PSEUDO"], "WS_PSEUDO",
                      "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={pseudo_study}")
        # (a pseudonym is random letters: "PUKROERPAYRWTX5F" once held "ROE"; a name has its caret)
        assert got and all(ds.PatientIdentityRemoved == "YES" and "DOE^" not in str(ds.PatientName)
                           and "ROE^" not in str(ds.PatientName) for ds in got)

        # Orthanc refuses an original dressed up with the envelope's markers
        forged = pydicom.dcmread(jane[0])
        forged.PatientIdentityRemoved = "YES"
        block = forged.private_block(0x0013, "PRIVACY GATEWAY ENVELOPE 1", create=True)
        block.add_new(0x01, "LO", "1")
        block.add_new(0x02, "LO", "kek-0001")
        block.add_new(0x07, "LO", "auth-0001:" + "0" * 32)
        before = len(orthanc.get("instances"))
        requests.post(f"{orthanc.url}/instances", data=encode(forged), auth=(ORTHANC_USER, orthanc.password),
                      timeout=30)
        assert len(orthanc.get("instances")) == before

        # an object with identity typed into it inside the PACS never reaches a pseudonymized workstation
        victim = orthanc.get("instances")[0]
        leaky = pydicom.dcmread(io.BytesIO(orthanc.get(f"instances/{victim}/file")))
        study = str(leaky.StudyInstanceUID)
        leaky.ImageComments = "DOE^JANE^Q ROE^RICHARD"
        uuid = orthanc.get(f"instances/{victim}/attachments/dicom/info")["Uuid"]
        (orthanc.folder / "storage" / uuid[:2] / uuid[2:4] / uuid).write_bytes(encode(leaky))
        orthanc.stop()  # Orthanc caches what it read; a restart reads the altered file
        orthanc.start()
        expected = len([i for i in orthanc.get("instances")
                        if orthanc.get(f"instances/{i}/study")["MainDicomTags"]["StudyInstanceUID"] == study])
        got, output = move(gateway, tmp_path / "egress", "WS_PSEUDO", ports["WS_PSEUDO"], "WS_PSEUDO",
                           "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}")
        assert len(got) == expected - 1 and all("DOE" not in str(ds.get("ImageComments", "")) for ds in got)
        assert "egress gate" in gateway.log_path.read_text()
        audit = run_cli("audit", "--config", str(gateway.config_path)).stdout
        assert "IdentifierDoesNotMatch" not in audit and "0xA900" in audit and "ROE" not in audit
    finally:
        gateway.stop()


def _sop_keys(ds: pydicom.Dataset) -> list[str]:
    return [f"StudyInstanceUID={ds.StudyInstanceUID}", f"SeriesInstanceUID={ds.SeriesInstanceUID}",
            f"SOPInstanceUID={ds.SOPInstanceUID}"]


def test_a_correction_supersedes_the_old_copy_end_to_end(tmp_path: Path, orthanc: OrthancServer) -> None:
    gateway, ports = _stack(tmp_path, orthanc)
    port = ports["WS_RESTORE"]
    try:
        files = write_study(tmp_path / "first", (2,), size=32)
        storescu(gateway.port, tmp_path / "first")
        wait_for(lambda: "forwarded    2" in gateway.status())
        # a byte-identical re-send changes nothing
        held = sorted(orthanc.get("instances"))
        storescu(gateway.port, tmp_path / "first")
        wait_for(lambda: "forwarded    4" in gateway.status())
        assert sorted(orthanc.get("instances")) == held

        for n, change in enumerate([{"PatientName": "DOE^JANET^Q"}, {"PatientID": "PID-4711-0816"}]):
            folder = tmp_path / f"fix{n}"
            folder.mkdir()
            for f in files:
                ds = pydicom.dcmread(f)
                for k, v in change.items():
                    setattr(ds, k, v)
                (folder / f.name).write_bytes(encode(ds))
            files = sorted(folder.iterdir())
            storescu(gateway.port, folder)
            forwarded = f"forwarded    {6 + 2 * n}"
            wait_for(lambda forwarded=forwarded: forwarded in gateway.status())
            corrected = pydicom.dcmread(files[0])
            assert len(orthanc.get("instances")) == 2  # one copy per SOP instance, never two
            assert len(orthanc.get("patients")) == 1  # nothing of the old identity stays reachable

            pid = f"PatientID={corrected.PatientID}"
            levels = {"PATIENT": [pid], "STUDY": [pid, f"StudyInstanceUID={corrected.StudyInstanceUID}"],
                      "SERIES": [pid, *_sop_keys(corrected)[:2]], "IMAGE": [pid, *_sop_keys(corrected)]}
            for level, keys in levels.items():
                found = find(gateway, tmp_path / f"f{n}{level}", f"QueryRetrieveLevel={level}", *keys, "PatientName",
                             model="-P")
                assert [str(ds.PatientName) for ds in found] == [str(corrected.PatientName)], level
                got, _ = move(gateway, tmp_path / f"m{n}{level}", "WS_RESTORE", port, "WS_RESTORE",
                              f"QueryRetrieveLevel={level}", *keys, model="-P")
                assert got and all(str(ds.PatientName) == str(corrected.PatientName)
                                   and ds.PatientID == corrected.PatientID for ds in got), level
            if "PatientID" in change:  # the old patient ID finds and moves nothing
                old = "PatientID=PID-4711-0815"
                assert find(gateway, tmp_path / f"old{n}", "QueryRetrieveLevel=PATIENT", old, model="-P") == []
                got, _ = move(gateway, tmp_path / f"mold{n}", "WS_RESTORE", port, "WS_RESTORE",
                              "QueryRetrieveLevel=PATIENT", old, model="-P")
                assert got == []
            back, _ = move(gateway, tmp_path / f"exact{n}", "WS_RESTORE", port, "WS_RESTORE", "QueryRetrieveLevel=STUDY",
                           f"StudyInstanceUID={corrected.StudyInstanceUID}")
            received = {str(ds.SOPInstanceUID): Path(ds.filename) for ds in back}
            for f in files:  # the corrected objects, byte for byte
                assert dataset_bytes(received[str(pydicom.dcmread(f).SOPInstanceUID)].read_bytes()) \
                    == dataset_bytes(f.read_bytes())
        audit = run_cli("audit", "--config", str(gateway.config_path)).stdout
        assert audit.count("supersede") == 4
    finally:
        gateway.stop()
