"""Mutated real DICOM objects through C-STORE: the gateway survives, leaks nothing, loses nothing.

Hypothesis mutates the encoded data set of real files (synthetic CTs that carry identity
everywhere, and pydicom's own files): flipped bytes, cuts, inserted junk, huge declared
lengths, repeated chunks. pynetdicom sends the mutated bytes as they are (its chunked
send streams the file without decoding it). Afterwards: the gateway still runs, Orthanc
holds no identifying value of any original, and a good study sent last arrives whole.
"""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom import _config as netconfig

from gateway import synthetic
from gateway.keyring import Keyring
from gateway.localstack import GatewayProcess, OrthancServer
from gateway.pseudonym import Pseudonymizer
from tests.conftest import encode
from tests.integration.conftest import HANDLED_IDENTITY, wait_for

EXAMPLES = 300
_mutation = st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.floats(0, 1), st.just(0)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("huge_length"), st.floats(0, 1), st.sampled_from([0xFFFFFFFF, 0xFFFFFFF0, 0x7FFFFFFF, 0x00010001])),
    st.tuples(st.just("repeat"), st.floats(0, 1), st.integers(1, 64)),
)


def _mutate(body: bytes, mutations: list[tuple[str, float, object]]) -> bytes:
    data = bytearray(body)
    for op, where, arg in mutations:
        at = int(where * max(len(data) - 1, 0))
        if op == "flip" and data:
            data[at] = int(arg)  # type: ignore[call-overload]
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = arg  # type: ignore[assignment]
        elif op == "huge_length" and len(data) >= at + 4:
            data[at:at + 4] = int(arg).to_bytes(4, "little")  # type: ignore[call-overload]
        elif op == "repeat":
            data[at:at] = data[at:at + int(arg)]  # type: ignore[call-overload]
    return bytes(data)


def _split(raw: bytes) -> tuple[bytes, bytes]:
    """(preamble + file meta, encoded data set) of a DICOM file."""
    fp = io.BytesIO(raw)
    pydicom.filereader.read_preamble(fp, False)
    pydicom.filereader._read_file_meta_info(fp)
    return raw[:fp.tell()], raw[fp.tell():]


def _bases() -> list[bytes]:
    series = synthetic.ct_series(3, size=32, identity=synthetic.Identity())
    files = [get_testdata_file(n) for n in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm")]
    return [encode(ds) for ds in series] + [Path(f).read_bytes() for f in files if f]


def test_mutated_objects_never_crash_leak_or_block_good_ones(tmp_path: Path, orthanc: OrthancServer) -> None:
    gateway = GatewayProcess(tmp_path / "gateway", orthanc, settle_seconds=0.5).start()
    raws = _bases()
    bases = [_split(raw) for raw in raws]
    ae = AE(ae_title="MODALITY")
    for sop_class, syntax in sorted({(str(m.MediaStorageSOPClassUID), str(m.TransferSyntaxUID))
                                     for m in (pydicom.dcmread(io.BytesIO(r)).file_meta for r in raws)}):
        ae.add_requested_context(sop_class, syntax)
    netconfig.STORE_SEND_CHUNKED_DATASET = True  # send each mutant's bytes exactly as made
    outcomes: dict[str, int] = {}
    tried = 0
    try:
        assoc = ae.associate("127.0.0.1", gateway.port, ae_title="GATEWAY")

        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
        @given(st.integers(0, len(bases) - 1), st.lists(_mutation, min_size=1, max_size=4))
        def send_one(base: int, mutations: list[tuple[str, float, object]]) -> None:
            nonlocal assoc, tried
            meta, body = bases[base]
            path = tmp_path / "mutant.dcm"
            path.write_bytes(meta + _mutate(body, mutations))
            tried += 1
            if not assoc.is_established:  # the gateway may abort an association over garbage
                outcomes["aborted"] = outcomes.get("aborted", 0) + 1
                assoc = ae.associate("127.0.0.1", gateway.port, ae_title="GATEWAY")
            assert assoc.is_established, "the gateway stopped accepting associations"
            status = assoc.send_c_store(path)
            key = f"0x{status.Status:04X}" if "Status" in status else "no response"
            outcomes[key] = outcomes.get(key, 0) + 1

        send_one()
        if assoc.is_established:
            assoc.release()
        netconfig.STORE_SEND_CHUNKED_DATASET = False
        print(f"\nfuzz: {tried} mutated objects sent; C-STORE outcomes {outcomes}")
        assert gateway.process is not None and gateway.process.poll() is None, "the gateway died"
        assert "0xC211" not in outcomes, "the C-STORE handler raised instead of answering"

        good = synthetic.ct_series(4, size=32, identity=synthetic.Identity())
        good_folder = tmp_path / "good"
        good_folder.mkdir()
        for i, ds in enumerate(good):
            (good_folder / f"{i}.dcm").write_bytes(encode(ds))
        from gateway.localstack import storescu

        storescu(gateway.port, good_folder)
        pseudonyms = Pseudonymizer(Keyring.load(gateway.keyring).pseudonym_secret)
        wanted = {pseudonyms.uid(str(ds.SOPInstanceUID)) for ds in good}

        def stored_uids() -> set[str]:
            return {i["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.get("instances?expand")}

        wait_for(lambda: wanted <= stored_uids(), timeout=120)
        for instance in orthanc.get("instances"):
            raw = orthanc.get(f"instances/{instance}/file")
            for value in HANDLED_IDENTITY:
                assert value.encode() not in raw.upper(), f"{value} reached Orthanc"
        assert gateway.process.poll() is None
    finally:
        netconfig.STORE_SEND_CHUNKED_DATASET = False
        gateway.stop()
