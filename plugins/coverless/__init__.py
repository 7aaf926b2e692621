"""Coverless transform: identity carried as row numbers of a hash table built from the
series' own images (Tan et al. 2020, DenseNet + coverless steganography)."""

from plugins.coverless.transform import CoverlessTransform

__all__ = ["CoverlessTransform"]
