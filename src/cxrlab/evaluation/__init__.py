"""Evaluation: metrics, threshold policies, patient-level bootstrap CIs, plots, the report."""
