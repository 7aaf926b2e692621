"""Images with the header's own identity burned into the pixels, with exact ground truth.

For the redaction tests and ``bench/burned_in.py``: CT, MR and ultrasound-like
backgrounds carry the patient's name, ID, birth date and institution (and some harmless
overlay text) in several fonts, sizes, contrasts and places: corners, over the anatomy,
and inverted (dark text on a bright label). Every character is drawn on its own, so the
ground truth knows each character's ink pixels, and whether it is identifying. All is
seeded: the same arguments give the same image.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)
from scipy import ndimage

from testkit import synthetic
from testkit.synthetic import Identity

DEJAVU = Path("/usr/share/fonts/truetype/dejavu")
FONT_FILES = ("DejaVuSans.ttf", "DejaVuSansMono.ttf", "DejaVuSerif.ttf", "DejaVuSans-Bold.ttf",
              "DejaVuSansCondensed.ttf")
KINDS = ("ct", "mr", "us", "us_rgb", "us_cine")


@dataclass
class Truth:
    """Where the text is: per-character ink labels, which characters identify, the anatomy."""

    char_labels: np.ndarray  # int32 (rows, cols): 0 none, k = ink of character k-1
    identifying: np.ndarray  # bool per character
    text_region: np.ndarray  # bool (rows, cols): boxes of every text line, a little padded
    anatomy: np.ndarray  # bool (rows, cols)
    lines: list[str] = field(default_factory=list)


@dataclass
class TestImage:
    dataset: Dataset
    truth: Truth
    kind: str


def fonts(size: int) -> list[ImageFont.ImageFont | ImageFont.FreeTypeFont]:
    """PIL's bundled fonts (bitmap and Aileron) and DejaVu faces where installed."""
    out: list[ImageFont.ImageFont | ImageFont.FreeTypeFont] = [ImageFont.load_default(size)]
    out += [ImageFont.truetype(str(DEJAVU / f), size) for f in FONT_FILES if (DEJAVU / f).exists()]
    return out


def identity_lines(identity: Identity, rng: np.random.Generator) -> list[tuple[str, str]]:
    """The identity as a modality might print it, in varying formats: (label, value)."""
    family, given, *_rest = [*identity.patient_name.split("^"), "", ""]
    names = [identity.patient_name, f"{family}, {given}", f"{given.title()} {family.title()}", f"{family}^{given}"]
    d = identity.birth_date
    dates = [d, f"{d[:4]}-{d[4:6]}-{d[6:]}", f"{d[6:]}.{d[4:6]}.{d[:4]}", f"{d[4:6]}/{d[6:]}/{d[:4]}"]
    return [
        ("", str(rng.choice(names))),
        ("ID: " if rng.random() < 0.5 else "", identity.patient_id),
        ("DOB " if rng.random() < 0.5 else "", str(rng.choice(dates))),
        ("", identity.institution if rng.random() < 0.6 else identity.institution.upper()),
    ]


HARMLESS = ("120 kV", "5.0 cm", "L", "TIS 0.4 MI 1.1", "Gain 52", "W 400 L 40", "FR 24Hz")


def make(kind: str, seed: int, identity: Identity = Identity(), size: int | None = None,
         frames: int | None = None) -> TestImage:
    """One test image of ``kind`` (see KINDS), its dataset carrying ``identity``; ``frames``
    sets a cine clip's length (4 by default)."""
    rng = np.random.default_rng(seed)
    frames = (frames or 4) if kind == "us_cine" else 1
    back, anatomy, top = _background(kind, rng, frames, size)
    rows, cols = anatomy.shape
    labels = np.zeros((rows, cols), np.int32)
    region = np.zeros((rows, cols), bool)
    ident: list[bool] = []
    texts: list[str] = []
    # one overlay drawn on a float copy per frame: (mask of ink, value) pairs
    ink_layers: list[tuple[np.ndarray, float]] = []
    fill_layers: list[tuple[np.ndarray, float]] = []
    id_lines = identity_lines(identity, rng)
    harmless = list(rng.choice(HARMLESS, size=2, replace=False))
    lines = [(label + value, len(label)) for label, value in id_lines] + [(str(t), None) for t in harmless]
    order = rng.permutation(len(lines))
    corners = {"tl": 6, "tr": 6, "bl": rows - 6, "br": rows - 6}
    for n, i in enumerate(order):
        text, value_start = lines[i]
        font_size = int(rng.integers(10, 25))
        font = fonts(font_size)[int(rng.integers(0, len(fonts(font_size))))]
        placement = "anatomy" if n == 0 and rng.random() < 0.6 else str(rng.choice(list(corners)))
        inverted = placement != "anatomy" and rng.random() < 0.2
        mask, char_masks = _render(text, font)
        h, w = mask.shape
        if w >= cols - 12:
            continue
        if placement == "anatomy":
            ys, _xs = np.nonzero(anatomy)
            y0 = int(np.clip(rng.integers(ys.min(), max(ys.max() - h, ys.min() + 1)), 0, rows - h - 1))
            x0 = int(np.clip((cols - w) // 2 + rng.integers(-cols // 8, cols // 8), 0, cols - w - 1))
        else:
            x0 = 6 if placement[1] == "l" else cols - 6 - w
            if placement[0] == "t":
                y0 = corners[placement]
                corners[placement] += h + 7
            else:
                corners[placement] -= h + 7
                y0 = corners[placement]
            if not 0 <= y0 <= rows - h or region[y0 : y0 + h, x0 : x0 + w].any():
                continue
        contrast = float(rng.choice([1.0, 0.75, 0.5])) if placement != "anatomy" else float(rng.choice([1.0, 0.85]))
        if inverted:
            box = np.zeros((rows, cols), bool)
            box[max(y0 - 2, 0) : y0 + h + 2, max(x0 - 3, 0) : x0 + w + 3] = True
            fill_layers.append((box, top * contrast))
            value = 0.0
        else:
            value = top * contrast
        ink = np.zeros((rows, cols), bool)
        ink[y0 : y0 + h, x0 : x0 + w] = mask
        ink_layers.append((ink, value))
        for k, cm in enumerate(char_masks):
            if cm.any():
                labels[y0 : y0 + h, x0 : x0 + w][cm] = len(ident) + 1
                ident.append(value_start is not None and k >= value_start)
        region[max(y0 - 3, 0) : y0 + h + 3, max(x0 - 4, 0) : x0 + w + 4] = True
        texts.append(text)
    pixels = back.copy()
    for box, v in fill_layers:
        pixels[:, box] = v
    for ink, v in ink_layers:
        pixels[:, ink] = v
    truth = Truth(labels, np.array(ident, bool), region, anatomy & ~region, texts)
    ds = _dataset(kind, pixels, identity, seed)
    return TestImage(ds, truth, kind)


def _render(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> tuple[np.ndarray, list[np.ndarray]]:
    """Ink mask of ``text`` and one mask per character (drawn one by one, so exact)."""
    _left, _top, right, bottom = font.getbbox(text)
    width = int(font.getlength(text)) + 4 + max(int(right) - int(font.getlength(text)), 0)
    height = int(bottom) + 2
    chars = []
    x = 0.0
    for ch in text:
        img = Image.new("L", (width, height), 0)
        ImageDraw.Draw(img).text((x + 1, 0), ch, fill=255, font=font)
        chars.append(np.asarray(img) > 96)
        x += font.getlength(ch)
    full = np.logical_or.reduce(chars) if chars else np.zeros((height, width), dtype=np.bool_)
    rows = np.nonzero(full.any(axis=1))[0]
    cut = slice(max(rows.min() - 1, 0), rows.max() + 2) if rows.size else slice(0, height)
    return full[cut], [c[cut] for c in chars]


def _background(kind: str, rng: np.random.Generator, frames: int,
                size: int | None) -> tuple[np.ndarray, np.ndarray, float]:
    """(frames, rows, cols) float pixel values in stored units, the anatomy mask, text value."""
    if kind == "ct":
        n = size or 512
        hu = synthetic.phantom_slice(float(rng.random()), n, seed=int(rng.integers(1 << 30))).astype(float)
        return (hu + 1024)[None], hu > -500, 4095.0
    if kind == "mr":
        n = size or 256
        yy, xx = np.mgrid[-1 : 1 : n * 1j, -1 : 1 : n * 1j]
        head = (xx / 0.7) ** 2 + (yy / 0.85) ** 2 <= 1
        brain = (xx / 0.62) ** 2 + (yy / 0.77) ** 2 <= 1
        img = np.where(head, 900.0, 0.0)
        img[brain] = 600.0
        for _ in range(6):
            cx, cy, r = rng.uniform(-0.4, 0.4), rng.uniform(-0.5, 0.5), rng.uniform(0.05, 0.18)
            img[((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r) & brain] = rng.uniform(300, 1100)
        img = ndimage.gaussian_filter(img, 1.5) + np.abs(rng.normal(0, 20, img.shape))
        return img[None], head, 1400.0
    rows, cols = (size or 480), int((size or 480) * 4 / 3)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(float)
    angle = np.arctan2(xx - cols / 2, yy + rows * 0.05)
    radius = np.hypot(xx - cols / 2, yy + rows * 0.05)
    fan = (np.abs(angle) < 0.6) & (radius > rows * 0.12) & (radius < rows * 0.95)
    out = []
    for _ in range(frames):
        speckle = ndimage.gaussian_filter(rng.rayleigh(1.0, (rows, cols)), 1.2)
        tissue = 70 + 50 * np.sin(xx / 37.0 + rng.random()) * np.cos(yy / 23.0) + 35 * speckle
        cyst = ((xx - cols * 0.55) ** 2 + (yy - rows * 0.5) ** 2) < (rows * 0.08) ** 2
        tissue[cyst] = 12 + 6 * speckle[cyst]
        out.append(np.where(fan, np.clip(tissue, 0, 200), 0.0))
    return np.stack(out), fan, 255.0


def _dataset(kind: str, pixels: np.ndarray, identity: Identity, seed: int) -> Dataset:
    """A complete DICOM dataset: the synthetic header's identity plus these pixels."""
    modality = {"ct": "CT", "mr": "MR"}.get(kind, "US")
    base = synthetic.ct_series(1, size=8, identity=identity, seed=seed, modality="CT" if modality == "CT" else "MR")[0]
    ds = Dataset()
    for elem in base:
        if elem.tag.group not in (0x0028, 0x7FE0) and elem.keyword not in ("ImagePositionPatient", "SliceLocation",
                                                                           "ImageOrientationPatient", "SliceThickness",
                                                                           "PixelSpacing"):
            ds.add(elem)
    ds.Modality = modality
    ds.Manufacturer = "TESTIMAGES"
    ds.ManufacturerModelName = kind.upper()
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[kind, str(seed), "sop"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[kind, str(seed), "series"])
    ds.BurnedInAnnotation = "YES"
    frames, rows, cols = pixels.shape
    ds.Rows, ds.Columns = rows, cols
    ds.PixelRepresentation = 0
    if kind in ("ct", "mr"):
        ds.SOPClassUID = base.SOPClassUID
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        if kind == "ct":
            ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        data = np.clip(np.rint(pixels[0]), 0, 4095).astype(np.uint16).tobytes()
    else:
        ds.SOPClassUID = UltrasoundMultiFrameImageStorage if frames > 1 else UltrasoundImageStorage
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        grey = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
        if kind == "us":
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            data = grey.tobytes()
        else:
            ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
            tint = np.array([1.0, 0.92, 0.8])
            data = np.clip(np.rint(grey[..., None] * tint), 0, 255).astype(np.uint8).tobytes()
        if frames > 1:
            ds.NumberOfFrames = frames
            ds.FrameTime = 40.0
    ds.PixelData = data
    ds["PixelData"].VR = "OW" if ds.BitsAllocated == 16 else "OB"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if kind == "mr" and seed % 2:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    return ds


def to_jpeg_baseline(ds: Dataset, quality: int = 92) -> Dataset:
    """The same image as JPEG Baseline (what many ultrasound machines send), 8-bit only."""
    frames = int(ds.get("NumberOfFrames", 1))
    spp = int(ds.SamplesPerPixel)
    arr = np.frombuffer(ds.PixelData, np.uint8).reshape(frames, ds.Rows, ds.Columns, *([spp] if spp > 1 else []))
    fragments = []
    for frame in arr:
        buf = io.BytesIO()
        Image.fromarray(frame, "RGB" if spp == 3 else "L").save(buf, "JPEG", quality=quality)
        fragments.append(buf.getvalue())
    ds.PixelData = encapsulate(fragments)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    if spp == 3:
        ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.LossyImageCompression = "01"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    return ds


def suite(n: int, seed: int = 0) -> list[TestImage]:
    """``n`` images cycling through every kind (the benchmark's set)."""
    return [item(i, seed) for i in range(n)]


def item(i: int, seed: int = 0) -> TestImage:
    """Image ``i`` of the benchmark's set, on its own (so workers need not make them all)."""
    names = ["DOE^JANE^Q", "MUELLER^HANS", "NGUYEN^THI^MAI", "O'BRIEN^PATRICK", "SMITH-JONES^ANNA"]
    ident = Identity(patient_name=names[i % len(names)], patient_id=f"PID-{4711 + 37 * i}-{i % 10}",
                     birth_date=f"19{40 + i % 60:02d}{1 + i % 12:02d}{1 + (7 * i) % 28:02d}",
                     institution=["Saint Example General Hospital", "Klinikum Musterstadt",
                                  "Riverside Imaging Center"][i % 3])
    return make(KINDS[i % len(KINDS)], seed * 100003 + i, ident)
