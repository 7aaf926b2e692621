"""The lossy preview: the decoder's image (optionally denoised) in place of the original.

For sites that want a viewable (de-identified) image in the PACS. The header says what
it is: ImageType DERIVED\\SECONDARY, Lossy Image Compression "01" with the ratio of the
original to the latent, a derivation code "Lossy Compression" and a description. The
exact original is restored through the gateway from the sealed payload.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from models import WEIGHTS
from models.dae import PaperDAE, denoise


@lru_cache(maxsize=1)
def dae() -> PaperDAE:
    model = PaperDAE()
    model.load_state_dict(torch.load(WEIGHTS / "dae.pt", weights_only=True))
    return model.eval()


def denoised(prediction: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """One frame of the prediction through the paper's DAE, back in stored values."""
    span = max(hi - lo, 1)
    out = denoise(dae(), (prediction - lo) / span)
    return np.clip(np.rint(out * span + lo), lo, hi).astype(np.int64)


def mark_lossy(ds: Dataset, model: str, ratio: float, denoised: bool) -> None:
    image_type = list(ds.get("ImageType", []))
    ds.ImageType = ["DERIVED", "SECONDARY", *image_type[2:]]
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = f"{ratio:.2f}"[:16]
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "113040", "DCM", "Lossy Compression"
    ds.DerivationCodeSequence = Sequence([code])
    how = " and the denoising autoencoder" if denoised else ""
    ds.DerivationDescription = (f"Lossy preview: autoencoder ({model}) reconstruction{how}; "
                                "the original is restorable through the gateway")[:1024]
