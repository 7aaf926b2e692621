"""Training and held-out images for the ae_aes models, all available offline.

Training: the synthetic CT phantom (``testkit.synthetic``, seeds 1000+) and a few real
non-CT images from pydicom-data (computed radiography and one MR). Held out for the
model cards and the benchmark: phantom seed 0 and the real 512x512 CT and MR files
(693_UNCR, eCT_Supplemental, MR2_UNCR), never seen in training.

Images are stored values (uint16 or int16 as in the file), normalised per image to
[0, 1] by their own minimum and maximum, as the transform does.
"""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.data import get_testdata_file

from testkit.synthetic import phantom_slice

TRAIN_FILES = ("RG1_UNCR.dcm", "RG3_UNCR.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm", "mlut_18.dcm")
HELD_OUT_FILES = ("693_UNCR.dcm", "eCT_Supplemental.dcm", "MR2_UNCR.dcm")


def stored_frames(name: str) -> list[np.ndarray]:
    """The frames of a pydicom-data file as stored values (2-D integer arrays)."""
    path = get_testdata_file(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not installed (pip install pydicom-data)")
    arr = pydicom.dcmread(path).pixel_array
    return list(arr) if arr.ndim == 3 else [arr]


def phantom(z: float, seed: int, size: int = 512) -> np.ndarray:
    """A phantom slice as the synthetic series stores it (uint16, HU + 1024)."""
    return (phantom_slice(z, size, seed=seed).astype(np.int32) + 1024).astype(np.uint16)


def normalise(img: np.ndarray) -> np.ndarray:
    lo, hi = float(img.min()), float(img.max())
    return ((img.astype(np.float32) - lo) / max(hi - lo, 1.0)).astype(np.float32)


def training_images(n_phantom: int = 48, rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """Normalised training images (float32, various sizes)."""
    rng = rng or np.random.default_rng(1)
    images = [normalise(phantom(float(rng.uniform()), seed=1000 + i)) for i in range(n_phantom)]
    for name in TRAIN_FILES:
        images += [normalise(f) for f in stored_frames(name)]
    return images


def held_out_real() -> dict[str, np.ndarray]:
    """Real CT/MR at 512x512 (stored values): the two CT files and the MR's centre crop."""
    out = {"ct_693": stored_frames("693_UNCR.dcm")[0]}
    for i, frame in enumerate(stored_frames("eCT_Supplemental.dcm")):
        out[f"ct_ect_{i}"] = frame
    mr = stored_frames("MR2_UNCR.dcm")[0]
    out["mr2_crop"] = mr[256:768, 256:768]
    return out


def random_crops(images: list[np.ndarray], n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` crops (n, 1, size, size), biased away from empty background."""
    out = np.empty((n, 1, size, size), np.float32)
    for k in range(n):
        for _ in range(8):
            img = images[int(rng.integers(len(images)))]
            y = int(rng.integers(0, img.shape[0] - size + 1))
            x = int(rng.integers(0, img.shape[1] - size + 1))
            crop = img[y : y + size, x : x + size]
            if crop.std() > 0.01:
                break
        out[k, 0] = crop
    return out
