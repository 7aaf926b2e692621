"""Local-contrast text detector: morphological top-hat and black-hat at the stroke scale.

The ROI method thresholds absolute grey levels, so text that touches the anatomy, or is
no brighter than the tissue under it (a half-contrast overlay on an MR head that fills
the frame), joins the anatomy's component and is lost. Text strokes are thin whatever
their level: an opening with a disk wider than a stroke removes them, so the white
top-hat (image minus its opening) holds bright strokes on any background and the
black-hat (closing minus image) dark ones, while anatomy wider than the disk drops out.

Fine anatomy (a skull's rim, vessels, trabeculae) is thin too, so marks only count as
text in lines: at least three glyph-sized marks standing on one baseline or reaching
one top line (a single wide mark, a word whose letters touch, is as often a bone's
edge in real CT and MR, and is left to the ROI detector). Each polarity is
grouped on its own, and where a bright and a dark line overlap only the text's own
polarity sets the rows (see ``_one_polarity``), so a line of text lying on tissue is
not stretched into it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from gateway.redaction.boxes import Box, clip
from gateway.redaction.roi import join_rows, otsu, small_components


def detect(frame: np.ndarray, stroke: int = 5, floor: float = 0.05, noise_k: float = 6.0, max_height: int = 48,
           gap: int = 7, pad: int = 0) -> list[Box]:
    """Boxes of text lines in one grey frame (2-D, any numeric type).

    ``stroke``: the disk's diameter (strokes up to about stroke - 1 pixels wide are
    found; wider, bold strokes are left to the ROI detector, as a larger disk takes in
    the rim of a head). A mark needs a local contrast above ``floor`` (share of the
    frame's range) and above ``noise_k`` times the frame's robust noise level in that
    response. The marks are the ink itself, so no ``pad`` is needed beyond the stage's.
    """
    img = frame.astype(np.float32)
    lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        return []
    img = (img - lo) / (hi - lo)
    lit = img > 0.02  # noise is measured where there is signal, not on the black surround
    found = []
    for response in (img - _open(img, stroke), _close(img, stroke) - img):
        sigma = 1.4826 * float(np.median(response[lit])) if lit.any() else 0.0
        marks = small_components(response > max(floor, noise_k * sigma), max_height, img.shape[1])
        found.append(lines(marks, max_height, gap))
    rows, cols = img.shape
    return [b for b in (clip(box, rows, cols, pad) for box in _one_polarity(img, *found)) if b]


def lines(marks: np.ndarray, max_height: int, gap: int) -> list[Box]:
    """Marks grouped into lines (joined across ``gap`` columns) that look like text.

    A mark is a glyph when at least 4 rows tall and at most 2.5 times as wide. A line
    is kept when three of its glyphs share a top or a bottom row (one row either way).
    Its rows are those of its glyphs: a sliver along a tissue edge that touches the
    line widens it but does not stretch it into the tissue.
    """
    labels, n = ndimage.label(join_rows(marks, gap))
    if n == 0:
        return []
    pieces, _ = ndimage.label(marks)
    piece_slices = ndimage.find_objects(pieces)
    boxes = []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl[0].stop - sl[0].start < 4:
            continue
        glyphs = []
        for p in np.unique(pieces[sl][labels[sl] == i]):
            if p == 0:
                continue
            ys, xs = piece_slices[p - 1]
            h, w = ys.stop - ys.start, xs.stop - xs.start
            if h >= 4 and w <= 2.5 * h:
                glyphs.append((ys.start, ys.stop))
        if _aligned(glyphs) < 3:
            continue
        top, bottom = min(t for t, _ in glyphs), max(b for _, b in glyphs)
        if bottom - top <= max_height:
            boxes.append((top, sl[1].start + gap, bottom, sl[1].stop - gap))
    return boxes


def _aligned(spans: list[tuple[int, int]]) -> int:
    """The most spans that share a top or a bottom row (one row either way): a line's
    letters stand on one baseline, and most reach one cap or x-height line."""
    best = 0
    for end in (0, 1):
        ends = np.array([s[end] for s in spans])
        best = max([best] + [int((np.abs(ends - e) <= 1).sum()) for e in ends])
    return best


def _one_polarity(img: np.ndarray, bright: list[Box], dark: list[Box]) -> list[Box]:
    """Where bright and dark lines overlap, the text's own polarity gives the rows.

    Bright text shows in the black-hat too (the gaps between its letters), and that
    line also takes in the dark gap between the text and bright tissue next to it.
    The ink is the minority of a text line's pixels (Otsu split of the overlapping
    lines' union), so that side is the text: its lines set the rows, all set the columns.
    """
    boxes = bright + dark
    group = list(range(len(boxes)))

    def root(k: int) -> int:
        while group[k] != k:
            k = group[k]
        return k

    for i in range(len(bright)):
        for j in range(len(bright), len(boxes)):
            if _overlap(boxes[i], boxes[j]) >= 0.5:
                group[root(j)] = root(i)
    clusters: dict[int, list[int]] = {}
    for k in range(len(boxes)):
        clusters.setdefault(root(k), []).append(k)
    out = []
    for members in clusters.values():
        if len({k < len(bright) for k in members}) == 1:
            out += [boxes[k] for k in members]
            continue
        top, bottom = min(boxes[k][0] for k in members), max(boxes[k][2] for k in members)
        left, right = min(boxes[k][1] for k in members), max(boxes[k][3] for k in members)
        values = img[top:bottom, left:right]
        text_is_bright = float(np.mean(values > otsu(values))) < 0.5
        text = [boxes[k] for k in members if (k < len(bright)) == text_is_bright]
        out.append((min(b[0] for b in text), left, max(b[2] for b in text), right))
    return out


def _overlap(a: Box, b: Box) -> float:
    """Shared area as a share of the smaller box."""
    h = min(a[2], b[2]) - max(a[0], b[0])
    w = min(a[3], b[3]) - max(a[1], b[1])
    if h <= 0 or w <= 0:
        return 0.0
    return h * w / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def _open(img: np.ndarray, stroke: int) -> np.ndarray:
    radius = _diamond_radius(stroke)
    if radius is None:
        return ndimage.grey_opening(img, footprint=_disk(stroke))
    return _by_cross(_by_cross(img, radius, np.minimum), radius, np.maximum)


def _close(img: np.ndarray, stroke: int) -> np.ndarray:
    radius = _diamond_radius(stroke)
    if radius is None:
        return ndimage.grey_closing(img, footprint=_disk(stroke))
    return _by_cross(_by_cross(img, radius, np.maximum), radius, np.minimum)


def _diamond_radius(stroke: int) -> int | None:
    """The radius when the stroke's disk is a diamond (diameters 3 and 5), else None.

    A diamond of radius r is r crosses added together, and a cross is a row of 3 and a
    column of 3: the opening then costs a few running minima and maxima instead of a
    filter over every footprint pixel, with the same result (the reflected border
    included, as the footprints are symmetric).
    """
    r = (stroke - 1) // 2
    yy, xx = np.mgrid[: 2 * r + 1, : 2 * r + 1] - r
    return r if stroke % 2 and np.array_equal(_disk(stroke), np.abs(xx) + np.abs(yy) <= r) else None


def _by_cross(img: np.ndarray, times: int, op: np.ufunc) -> np.ndarray:
    """Grey erosion (``np.minimum``) or dilation (``np.maximum``) by a 3x3 cross, ``times``
    over, the border reflected as scipy's filters do."""
    for _ in range(times):
        p = np.pad(img, 1, mode="symmetric")
        img = op(op(op(p[1:-1, 1:-1], p[:-2, 1:-1]), op(p[2:, 1:-1], p[1:-1, :-2])), p[1:-1, 2:])
    return img


def _disk(diameter: int) -> np.ndarray:
    r = (diameter - 1) / 2
    yy, xx = np.mgrid[:diameter, :diameter] - r
    return xx**2 + yy**2 <= r * r + 0.5
