"""Workflows above training and inference: the sweep of a study (plan, run, status, submit)."""
