"""Reproducible experiments, each runnable as ``python -m lvmcore.experiments.<name>``."""
