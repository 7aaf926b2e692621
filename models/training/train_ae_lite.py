"""Train our small autoencoder (ae_lite) and export its integer decoder.

    .venv/bin/python -m models.training.train_ae_lite            # about 6 minutes on one CPU thread
"""

from models.training.ae_training import main

if __name__ == "__main__":
    main("ae_lite", {"steps": 2500, "crop": 128, "batch": 16, "loss": "bits", "lr": 2e-3})
