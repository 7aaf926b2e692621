"""Synthetic studies with identity in many places, for the demo, tests and benchmarks.

The phantom is a smooth 3D body (ellipse outline, lungs, spine, vessels and organs whose
shape changes slowly with z) in Hounsfield units, so neighbouring slices look alike as in
a real CT. Everything is seeded: the same arguments give the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid


@dataclass(frozen=True)
class Identity:
    """The identifying values the synthetic study carries (all fictional)."""

    patient_name: str = "DOE^JANE^Q"
    patient_id: str = "PID-4711-0815"
    birth_date: str = "19610412"
    sex: str = "F"
    accession: str = "ACC20240517"
    institution: str = "Saint Example General Hospital"
    referring: str = "HOUSE^GREGORY"
    operator: str = "CUDDY^LISA"
    study_date: str = "20240517"
    address: str = "12 Elm Street Springfield"


def phantom_slice(z: float, size: int = 512, seed: int = 0) -> np.ndarray:
    """One axial slice (int16 HU) at normalised height ``z`` in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    img = np.full((size, size), -1024.0)
    a, b = 0.82 + 0.06 * np.sin(z * 3.1), 0.62 + 0.05 * np.cos(z * 2.3)
    body = (xx / a) ** 2 + (yy / b) ** 2 <= 1
    img[body] = 40.0
    for sx in (-1, 1):
        lx, ly = sx * (0.36 + 0.04 * np.sin(z * 5)), -0.05
        la, lb = 0.24 + 0.08 * np.sin(z * np.pi), 0.34 + 0.06 * np.sin(z * 2)
        img[((xx - lx) / la) ** 2 + ((yy - ly) / lb) ** 2 <= 1] = -850.0
    img[(xx / 0.09) ** 2 + ((yy - 0.42) / 0.08) ** 2 <= 1] = 700.0 + 300 * z
    img[(xx / 0.05) ** 2 + ((yy - 0.42) / 0.04) ** 2 <= 1] = 30.0
    vx, vy = 0.08 * np.cos(z * 7), 0.15 + 0.05 * np.sin(z * 4)
    img[((xx - vx) / 0.07) ** 2 + ((yy - vy) / 0.07) ** 2 <= 1] = 300.0
    ox, oy = -0.25 + 0.1 * z, 0.2
    img[((xx - ox) / (0.15 + 0.1 * z)) ** 2 + ((yy - oy) / 0.12) ** 2 <= 1] = 60.0 + 20 * z
    img[body] += rng.normal(0, 12, size=int(body.sum()))
    return np.clip(img, -1024, 1500).astype(np.int16)


def ct_series(
    n: int,
    size: int = 512,
    identity: Identity = Identity(),
    study_uid: str | None = None,
    series_number: int = 1,
    seed: int = 0,
    modality: str = "CT",
) -> list[Dataset]:
    """``n`` slices of one series, each a complete DICOM file dataset with identity in
    the patient module, physician names, institution, dates, descriptions, a nested
    sequence, a private block and free text."""
    study_uid = study_uid or generate_uid(entropy_srcs=[identity.accession, "study"])
    series_uid = generate_uid(entropy_srcs=[study_uid, str(series_number)])
    frame_uid = generate_uid(entropy_srcs=[study_uid, "frame"])
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    out = []
    for i in range(n):
        z = i / max(n - 1, 1)
        ds = _header(identity, study_uid, series_uid, frame_uid, sop_class, series_number, i, modality)
        pixels = phantom_slice(z, size, seed=seed * 100003 + series_number * 1009 + i)
        ds.Rows = ds.Columns = size
        ds.ImagePositionPatient = [-250.0, -250.0, -400.0 + 3.0 * i]
        ds.SliceLocation = -400.0 + 3.0 * i
        ds.PixelData = (pixels.astype(np.int32) + 1024).astype(np.uint16).tobytes()
        out.append(ds)
    return out


def _header(
    ident: Identity,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    sop_class: str,
    series_number: int,
    index: int,
    modality: str,
) -> Dataset:
    sop_uid = generate_uid(entropy_srcs=[series_uid, str(index)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = ident.study_date
    ds.StudyTime = ds.SeriesTime = "101530.000000"
    ds.AccessionNumber = ident.accession
    ds.Modality = modality
    ds.Manufacturer = "ACME Imaging"
    ds.InstitutionName = ident.institution
    ds.InstitutionAddress = ident.address
    ds.ReferringPhysicianName = ident.referring
    ds.StationName = "CT-ROOM-3"
    ds.StudyDescription = f"CT CHEST for {ident.patient_name.split('^')[0]}"
    ds.SeriesDescription = "AXIAL 3MM"
    ds.OperatorsName = ident.operator
    ds.ManufacturerModelName = "Phantomatic 64"
    ds.PatientName = ident.patient_name
    ds.PatientID = ident.patient_id
    ds.PatientBirthDate = ident.birth_date
    ds.PatientSex = ident.sex
    ds.PatientAge = "063Y"
    ds.OtherPatientIDsSequence = Sequence([_other_id(ident)])
    ds.PatientComments = f"Patient {ident.patient_name} (MRN {ident.patient_id}) lives at {ident.address}"
    ds.DeviceSerialNumber = "SN-998877"
    ds.ProtocolName = "CHEST ROUTINE"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "S" + ident.accession[-6:]
    ds.SeriesNumber = series_number
    ds.InstanceNumber = index + 1
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = frame_uid
    ds.RequestAttributesSequence = Sequence([_request(ident)])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 3.0
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    block = ds.private_block(0x0009, "ACME PRIVATE", create=True)
    block.add_new(0x01, "LO", ident.patient_name)
    block.add_new(0x02, "LO", ident.patient_id)
    return ds


def _other_id(ident: Identity) -> Dataset:
    item = Dataset()
    item.PatientID = ident.patient_id + "-OLD"
    item.IssuerOfPatientID = "Saint Example MRN"
    return item


def _request(ident: Identity) -> Dataset:
    item = Dataset()
    item.RequestedProcedureID = "RP" + ident.accession
    item.ScheduledProcedureStepID = "SPS" + ident.accession
    item.RequestedProcedureDescription = f"Chest CT ordered by {ident.referring}"
    return item
