"""Inference: a Predictor restored from a checkpoint alone, and the predict.py command."""
