"""Hyper-parameter sweeps: cxrlab's Optuna sweeper for Hydra (``hparams_search=optuna``)."""
