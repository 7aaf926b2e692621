"""Burned-in text redaction: detectors find the text, blanking is complete, restore is exact."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate

from gateway.keyring import Keyring
from gateway.plugin import Context, PluginError
from gateway.protect import Quarantine, protect_series
from gateway.redaction import RedactionStage, ocr, ocr_matching, parallel, roi, rules
from gateway.redaction.boxes import mask_of, text_bands
from gateway.redaction.pixels import load
from gateway.restore import restore_series
from gateway.route_spec import RouteSpec
from gateway.study_keys import MemoryDataKeys
from testkit import synthetic, testimages
from tests.conftest import encode

# A fixed region on every image: exercises every pixel layout without any detector cost.
CORNERS = {"detectors": ["rules"], "default_rules": False, "pad": 0,
           "rules": [{"name": "corners", "regions": [[0, 0, 8, 6], [-5, -4, 0, 0]]}]}
# Objects the stage refuses on purpose (quarantine is the safe outcome), besides 1-bit
# data (checked from the file): name -> why. Big-endian pixels are edited in place.
REFUSED = {
    "JPEG-lossy.dcm": "undecodable", "JPEG2000-embedded-sequence-delimiter.dcm": "undecodable",
    "MR_truncated.dcm": "truncated", "badVR.dcm": "invalid attributes",
}


def _refusal(ds: Dataset, name: str) -> str | None:
    if ds.get("BitsAllocated") == 1:
        return "1-bit pixel data"
    return REFUSED.get(name)


def _image_files() -> list[Path]:
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in sorted(set(get_testdata_files("*"))):
            try:
                ds = pydicom.dcmread(f)
                ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.Rows  # noqa: B018
            except Exception:  # noqa: BLE001 - not an image object: nothing to redact
                continue
            if "PixelData" in ds:
                out.append(Path(f))
    return out


IMAGES = _image_files()


def _first_box_blank(ds: Dataset) -> bool:
    px = load(ds)
    return bool((px.array[:, 0:6, 0:8, :] == px.fill()).all())


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("path", IMAGES, ids=lambda p: p.name)
def test_every_pixel_layout_is_blanked_and_restored_exactly(path: Path, keyring: Keyring) -> None:
    raw = path.read_bytes()
    refused = _refusal(pydicom.dcmread(path, stop_before_pixels=True), path.name)
    try:
        [out] = protect_series([raw], RouteSpec(redaction=CORNERS), keyring, MemoryDataKeys())
    except Quarantine as exc:
        assert refused is not None, str(exc)
        return
    assert refused is None, f"{path.name} was expected to be refused: {refused}"
    protected = pydicom.dcmread(io.BytesIO(out.data))
    assert protected.BurnedInAnnotation == "NO"
    assert "113101" in [item.CodeValue for item in protected.DeidentificationMethodCodeSequence]
    assert _first_box_blank(protected)
    [restored] = restore_series([out.data], keyring)
    assert restored.error is None and restored.data == raw


def test_a_jpeg_cine_is_blanked_in_every_frame_and_comes_back_byte_exact(keyring: Keyring) -> None:
    image = testimages.make("us_cine", seed=3)
    original = testimages.to_jpeg_baseline(image.dataset)
    raw = encode(original)
    [out] = protect_series([raw], RouteSpec(redaction={"detectors": ["roi"]}), keyring, MemoryDataKeys())
    protected = pydicom.dcmread(io.BytesIO(out.data))
    assert protected.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert protected.PhotometricInterpretation == "RGB" and protected.NumberOfFrames == 4
    frames = protected.pixel_array  # (4, rows, cols, 3)
    blank = (frames == 0).all(axis=(0, 3))  # black in every frame and sample
    ink = image.truth.char_labels > 0
    assert blank[ink].mean() > 0.95  # the roi detector alone finds nearly all of the text
    assert blank[image.truth.anatomy].mean() < 0.01
    [restored] = restore_series([out.data], keyring)
    assert restored.error is None and restored.data == raw


def test_native_multiframe_record_holds_only_the_boxes(keyring: Keyring) -> None:
    ds = testimages.make("us_cine", seed=5).dataset
    original = bytes(ds.PixelData)
    stage = RedactionStage(**CORNERS)
    [record] = stage.protect([ds], Context(series_key=b"k" * 32))
    assert record[:1] == b"N" and len(record) < 2000  # boxes only, not the 3.7 MB of pixels
    frames = ds.pixel_array
    assert (frames[:, 0:6, 0:8] == 0).all() and (frames[:, -4:, -5:] == 0).all()
    assert (frames[:, 6:-4] == np.frombuffer(original, np.uint8).reshape(frames.shape)[:, 6:-4]).all()
    stage.restore([ds], [record], Context(series_key=b"k" * 32))
    assert bytes(ds.PixelData) == original


def test_undecodable_compressed_pixels_are_refused() -> None:
    ds = testimages.to_jpeg_baseline(testimages.make("us", seed=1).dataset)
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0 not a jpeg stream \xff\xd9"])
    with pytest.raises(PluginError, match="cannot be decoded"):
        RedactionStage(**CORNERS).protect([ds], Context(series_key=b"k" * 32))


def test_a_record_that_does_not_fit_fails_loudly() -> None:
    ds = testimages.make("mr", seed=2).dataset
    stage = RedactionStage(**CORNERS)
    [record] = stage.protect([ds], Context(series_key=b"k" * 32))
    with pytest.raises(PluginError):
        stage.restore([ds], [record[:-7]], Context(series_key=b"k" * 32))


@pytest.mark.parametrize("kind", ["ct", "us", "us_rgb"])
def test_roi_detector_finds_text_outside_the_anatomy_and_spares_the_anatomy(kind: str) -> None:
    recall, anatomy = [], []
    for seed in range(4):
        image = testimages.make(kind, seed)
        grey = load(image.dataset).grey()
        mask = mask_of([b for f in grey for b in roi.detect(f)], *grey.shape[1:])
        outside = (image.truth.char_labels > 0) & ~_dilated(image.truth.anatomy)
        recall.append(mask[outside].mean())
        anatomy.append(mask[image.truth.anatomy].mean())
    assert np.mean(recall) > 0.97 and max(anatomy) < 0.01


def _dilated(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage
    return ndimage.binary_dilation(mask, iterations=6)  # type: ignore[no-any-return]


def _mr_head(n: int = 256, seed: int = 0) -> np.ndarray:
    """A text-free MR-like head that fills the frame: bright rim, darker brain, a lesion, noise."""
    from scipy import ndimage

    yy, xx = np.mgrid[-1 : 1 : n * 1j, -1 : 1 : n * 1j]
    img = np.where((xx / 0.7) ** 2 + (yy / 0.85) ** 2 <= 1, 900.0, 0.0)
    img[(xx / 0.62) ** 2 + (yy / 0.77) ** 2 <= 1] = 600.0
    img[(xx - 0.2) ** 2 + (yy + 0.3) ** 2 <= 0.02] = 1100.0
    noise = np.abs(np.random.default_rng(seed).normal(0, 20, img.shape))
    return ndimage.gaussian_filter(img, 1.5) + noise  # type: ignore[no-any-return]


def test_tophat_finds_half_contrast_text_on_a_head_that_fills_the_frame() -> None:
    head = _mr_head()
    ink = np.zeros(head.shape, bool)
    for (x, y), text in (((70, 120), "DOE^JANE 19610412"), ((40, 218), "PID-4711-0815")):  # mid-brain; over the rim
        canvas = Image.new("L", head.shape[::-1])
        ImageDraw.Draw(canvas).text((x, y), text, fill=255, font=testimages.fonts(14)[0])
        ink |= np.asarray(canvas) > 96
    frame = np.where(ink, 700.0, head)  # above the brain, below the rim: no grey level separates it
    boxes = RedactionStage(detectors=["tophat"]).find(Dataset(), frame[None], ocr_matching.Matcher({}))
    mask = mask_of(boxes, *frame.shape)
    assert mask[ink].all()
    assert mask[~_dilated(ink)].mean() < 0.005
    assert mask_of(roi.detect(frame), *frame.shape)[ink].mean() < 0.5  # what the threshold method misses


def test_tophat_leaves_text_free_ct_and_mr_alone() -> None:
    frames = [synthetic.phantom_slice(0.4, 512, seed=3).astype(float), _mr_head(seed=3)]
    real = ("693_UNCI.dcm", "CT_small.dcm", "MR_small.dcm")  # a head CT, a spine CT (bone edges), a head MR
    frames += [load(pydicom.dcmread(get_testdata_file(name))).grey()[0] for name in real]
    for frame in frames:
        boxes = RedactionStage(detectors=["tophat"]).find(Dataset(), frame[None], ocr_matching.Matcher({}))
        assert mask_of(boxes, *frame.shape).mean() < 0.002


def test_otsu_splits_two_levels() -> None:
    values = np.concatenate([np.full(500, 0.2), np.full(500, 0.8)])
    assert ((values > roi.otsu(values)) == (values == 0.8)).all()


def test_matching_is_lenient_on_ocr_readings_and_strict_on_harmless_text() -> None:
    m = ocr_matching.Matcher({"PatientName": "MUELLER^HANS", "PatientID": "PID-4748-1", "PatientBirthDate": "19410208",
                          "InstitutionName": "Klinikum Musterstadt"})
    for word in ("MUELLER*HANS", "MUELLER~", "Hans", "PID-4748-", "08.02.1941", "02/08/1941", "19410208",
                 "Musterstaat", "KLINIKUM", "31.12.2001", "A*B"):
        assert m.identifying(word), word
    for word in ("120", "kV", "TIS", "0.4", "Gain", "5.0", "cm", "W", "400", "FR", "24Hz", "Smith"):
        assert not m.identifying(word), word


def test_a_label_word_takes_its_whole_line() -> None:
    m = ocr_matching.Matcher({"PatientName": "DOE^JANE"})
    words = [ocr.Word("DOB", (0, 0, 10, 20), (1, 1, 1), 90), ocr.Word("l2-O4-61", (0, 25, 10, 70), (1, 1, 1), 40),
             ocr.Word("Gain", (20, 0, 30, 20), (1, 1, 2), 90)]
    assert [w.text for w in m.select(words)] == ["DOB", "l2-O4-61"]


def test_rules_match_devices_and_count_from_the_edges() -> None:
    ds = Dataset()
    ds.Manufacturer, ds.ManufacturerModelName, ds.Modality, ds.Rows, ds.Columns = "Acme Medical", "Sono 5", "US", 480, 640
    site = [{"name": "acme banner", "manufacturer": "ACME", "model": "sono", "regions": [[0, 0, 0, 40], [-100, -20, 100, 0]]},
            {"name": "other size", "manufacturer": "acme", "rows": 600, "regions": [[0, 0, 10, 10]]}]
    found = rules.detect(ds, rules.load(site, defaults=False))
    assert found == [(0, 0, 40, 640), (460, 540, 480, 640)]
    assert rules.detect(ds, rules.load(None)) == [(0, 0, 24, 640)]  # the shipped generic US banner


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(PluginError):
        RedactionStage(detectors=["magic"])
    with pytest.raises(PluginError):
        RedactionStage(ocr_text="some")


@pytest.mark.skipif(not ocr.available(), reason="tesseract-ocr's English data is not installed")
def test_ocr_finds_the_patients_own_identity_in_a_colour_ultrasound() -> None:
    image = testimages.make("us_rgb", seed=3)  # name in DICOM form (^), ID, birth date, institution
    ds = image.dataset
    identity = {"PatientName": str(ds.PatientName), "PatientID": ds.PatientID, "PatientBirthDate": ds.PatientBirthDate,
                "InstitutionName": ds.InstitutionName}
    [record] = RedactionStage(detectors=["ocr"]).protect([ds], Context(series_key=b"k" * 32, identity=identity))
    assert record[:1] == b"N"
    blank = (ds.pixel_array == 0).all(axis=-1)
    ident = np.isin(image.truth.char_labels, np.nonzero(image.truth.identifying)[0] + 1)
    harmless = (image.truth.char_labels > 0) & ~ident
    assert blank[ident].mean() > 0.95
    assert blank[harmless].mean() < 0.5  # "TIS 0.4 MI 1.1", "W 400 L 40" are not identity
    assert blank[image.truth.anatomy].mean() < 0.01


def _draw(frame: np.ndarray, xy: tuple[int, int], text: str, size: int = 14) -> np.ndarray:
    """Burn ``text`` into ``frame`` (rows, cols, samples) in white; its ink mask."""
    canvas = Image.new("L", frame.shape[1::-1])
    ImageDraw.Draw(canvas).text(xy, text, fill=255, font=testimages.fonts(size)[-1])
    ink = np.asarray(canvas) > 96
    frame[ink] = 255
    return ink


def test_text_on_one_frame_of_ninety_is_found_and_blanked_in_every_frame() -> None:
    """A static overlay is read once; what one frame alone shows (over the anatomy, or in
    the black margin, on frames no full search visits) must not escape."""
    image = testimages.make("us_cine", seed=11, size=360, frames=6)
    ds = image.dataset
    clip = np.resize(np.frombuffer(ds.PixelData, np.uint8), (90, 360, 480, 3))  # six frames over and over
    ds.NumberOfFrames = 90
    over_fan = _draw(clip[57], (170, 180), "DOE^JANE 19610412")
    in_margin = _draw(clip[33], (8, 300), "PID-4711-0815")
    ds.PixelData = clip.tobytes()
    original = bytes(ds.PixelData)
    stage = RedactionStage()
    ctx = Context(series_key=b"k" * 32, identity={"PatientName": "DOE^JANE", "PatientID": "PID-4711-0815"})
    [record] = stage.protect([ds], ctx)
    blank = (ds.pixel_array == 0).all(axis=-1)  # (frames, rows, cols)
    static = image.truth.char_labels > 0
    for ink in (over_fan, in_margin, static):
        assert blank[:, ink].all()  # in every frame
    planted_rows = np.zeros_like(over_fan)
    planted_rows[over_fan.any(axis=1)] = True
    assert blank[0][image.truth.anatomy & ~_dilated(planted_rows)].mean() < 0.015  # 16 sampled frames: 0.0106
    stage.restore([ds], [record], ctx)
    assert bytes(ds.PixelData) == original


def test_frames_searched_in_worker_processes_give_what_this_process_finds() -> None:
    clip = load(testimages.make("us_cine", seed=4, size=160, frames=8).dataset).grey()
    here = parallel.map_frames(clip, list(range(8)), ("roi", "tophat"), workers=1)
    assert parallel.map_frames(clip, list(range(8)), ("roi", "tophat"), workers=2) == here
    assert all(found["roi"] and found["tophat"] for found in here)


def test_ocr_bands_run_the_frames_width_and_merge() -> None:
    bands = text_bands([(100, 40, 110, 90), (106, 200, 118, 260), (10, 0, 30, 20)], rows=256, cols=320)
    assert bands == [(0, 0, 40, 320), (95, 0, 124, 320)]


@pytest.mark.skipif(not ocr.available(), reason="tesseract-ocr's English data is not installed")
def test_ocr_reads_only_the_regions_it_is_given_in_frame_coordinates() -> None:
    frame = np.zeros((200, 320, 1), np.uint8)
    name = _draw(frame, (20, 30), "MUELLER^HANS", size=18)
    _draw(frame, (20, 140), "PID-4748-1", size=18)
    words = ocr.read(frame[..., 0], regions=[(20, 0, 60, 320)])
    assert words and all(w.box[0] >= 20 and w.box[2] <= 60 for w in words)
    ys, xs = np.nonzero(name)
    assert mask_of([w.box for w in words], 200, 320)[ys, xs].mean() > 0.9
    assert not any("4748" in w.text for w in words)


def test_the_sample_of_frames_reaches_the_last_frame() -> None:
    from gateway.redaction.stage import _spread

    assert _spread(4, 16) == [0, 1, 2, 3] and _spread(90, 2) == [0, 89] and _spread(1, 2) == [0]


def test_a_known_line_seen_longer_in_one_frame_is_new_only_when_text_was_added() -> None:
    from gateway.redaction.stage import _news

    known = mask_of([(100, 50, 116, 250)], 300, 400)  # a 16-row line
    assert not _news((100, 50, 116, 250), known)
    assert not _news((97, 44, 118, 262), known)  # speckle joined above, below and at the ends
    assert _news((100, 50, 116, 280), known)  # three glyphs more at the end: a name appended
    assert _news((100, 300, 116, 380), known)  # a line of its own


def test_a_killed_frame_worker_falls_back_to_this_process() -> None:
    import os
    import signal

    clip = load(testimages.make("us_cine", seed=4, size=160, frames=8).dataset).grey()
    here = parallel.map_frames(clip, list(range(8)), ("roi", "tophat"), workers=1)
    pool = parallel._pool(2)
    assert parallel.map_frames(clip, list(range(8)), ("roi", "tophat"), workers=2) == here  # workers started
    for pid in list(pool._processes):  # type: ignore[attr-defined]
        os.kill(pid, signal.SIGKILL)
    assert parallel.map_frames(clip, list(range(8)), ("roi", "tophat"), workers=2) == here
    assert parallel._pool(2) is not pool  # a fresh pool next time


def test_a_config_from_before_every_frame_was_searched_still_loads(caplog: pytest.LogCaptureFixture) -> None:
    """``roi_frames`` (how many frames roi and tophat sampled) is gone; a site's route that
    still sets it must not stop the gateway's start, and the operator hears it is ignored."""
    stage = RedactionStage(detectors=["tophat"], roi_frames=16)
    assert stage.detectors == ("tophat",)
    assert "roi_frames is no longer used" in caplog.text
