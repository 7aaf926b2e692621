"""Network definitions, their training scripts, shipped weights and model cards.

Each weight file ``NAME.pt`` has a model card ``NAME.md`` (data, settings, measured quality)
and is produced by a training script in this folder. Nothing is downloaded at run time.
"""

from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent
