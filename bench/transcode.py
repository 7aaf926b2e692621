"""Transcoding benchmark: what decoding a verified original for an uncompressed-only
workstation costs per object (``gateway.transcode.transcode``).

    .venv/bin/python -m bench.transcode [--repeats 20]

Uses pydicom's own test files (JPEG 2000, colour JPEG baseline, a 10-frame JPEG 2000
lossless MR, RGB RLE) and a 512x512 16-bit CT made by ``testkit.synthetic`` and
compressed to JPEG 2000 lossless with pylibjpeg-openjpeg. Prints
JSON: per file, the mean milliseconds of one transcode to explicit VR little endian (one
thread), the original's and the output's size.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from gateway.transcode import transcode
from testkit import synthetic


def _ct_j2k() -> bytes:
    ds = synthetic.ct_series(1, size=512)[0]
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    files = {name: Path(get_testdata_file(name)).read_bytes() for name in
             ("JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm", "emri_small_jpeg_2k_lossless.dcm", "SC_rgb_rle.dcm")}
    files["synthetic CT 512x512 J2K lossless"] = _ct_j2k()
    out = {}
    for name, data in files.items():
        result = transcode(data, ExplicitVRLittleEndian)  # warm the decoder
        start = time.perf_counter()
        for _ in range(args.repeats):
            transcode(data, ExplicitVRLittleEndian)
        out[name] = {"ms_per_object": round((time.perf_counter() - start) / args.repeats * 1000, 2),
                     "original_bytes": len(data), "output_bytes": len(result)}
    print(json.dumps({"repeats": args.repeats, "files": out}, indent=2))


if __name__ == "__main__":
    main()
