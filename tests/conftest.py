"""Shared fixtures: a keyring, synthetic studies written as files, a PostgreSQL server."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from gateway.keyring import Keyring
from testkit import synthetic
from testkit.postgres import PostgresServer, have_postgres


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    return Keyring.create(tmp_path / "keyring.json")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (Debian ``postgresql``); each test that
    needs a clean state creates its own database on it (``create_database``)."""
    if not have_postgres():
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    server = PostgresServer().start()
    yield server
    server.stop()


def encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_study(folder: Path, series_sizes: tuple[int, ...] = (3, 2), size: int = 64,
                identity: synthetic.Identity = synthetic.Identity()) -> list[Path]:
    """A multi-series synthetic study as files; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = None
    paths = []
    for number, n in enumerate(series_sizes, start=1):
        series = synthetic.ct_series(n, size=size, identity=identity, study_uid=study_uid, series_number=number)
        study_uid = str(series[0].StudyInstanceUID)
        for i, ds in enumerate(series):
            path = folder / f"s{number}_{i}.dcm"
            path.write_bytes(encode(ds))
            paths.append(path)
    return paths
