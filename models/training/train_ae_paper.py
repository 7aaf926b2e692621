"""Train the seed paper's autoencoder (one channel) the paper's way: Adamax, MSE.

    .venv/bin/python -m models.training.train_ae_paper           # about 5 minutes on one free CPU thread
"""

from models.training.ae_training import main

if __name__ == "__main__":
    main("ae_paper", {"steps": 200, "crop": 48, "batch": 8, "loss": "mse", "lr": 2e-3})
