"""Which storage SOP classes are images.

Non-image objects (encapsulated PDF and CDA, structured reports, presentation states with
their text annotations, waveforms, RT plans, raw data) carry identity in their content (a
report's text, a scanned form) that header de-identification cannot judge, so the admin
decides what happens to them (``listener.non_image``).
"""

from __future__ import annotations

from pydicom.uid import UID

# Pixel-bearing storage classes whose registry name does not say "Image".
_PIXEL_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.6.2",     # Enhanced US Volume Storage
    "1.2.840.10008.5.1.4.1.1.30",      # Parametric Map Storage
    "1.2.840.10008.5.1.4.1.1.66.4",    # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.481.2",   # RT Dose Storage
    "1.2.840.10008.5.1.4.1.1.81.1",    # Ophthalmic Thickness Map Storage
    "1.2.840.10008.5.1.4.1.1.82.1",    # Corneal Topography Map Storage
    "1.2.840.10008.5.1.4.1.1.77.1.5.8",  # Ophthalmic OCT B-scan Volume Analysis Storage
})


def is_image(sop_class_uid: str) -> bool:
    """True for the image storage SOP classes and the few other pixel-bearing ones."""
    return sop_class_uid in _PIXEL_CLASSES or "Image Storage" in UID(sop_class_uid).name
