"""Burned-in PHI: find identifying text in pixels and blank it, reversibly.

Detectors (device region rules, the coverless paper's threshold + small-component ROI
method, a local-contrast top-hat text detector, tesseract OCR matched against the
instance's identity) are combined per route;
see ``RedactionStage`` for the settings.
"""

from gateway.redaction.stage import RedactionStage

__all__ = ["RedactionStage"]
