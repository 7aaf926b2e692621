"""How the shipped weights in ``models/`` were made: one training script per weight file
(``python -m models.training.train_<name>``), the data they read and the quality figures
their model cards quote. The runtime (networks, weights) never imports this package;
training imports the plugins to make data the way the gateway protects it.
"""
