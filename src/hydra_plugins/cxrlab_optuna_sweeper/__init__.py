"""Hydra discovers this package (``hydra_plugins`` namespace) and registers cxrlab's sweeper."""
