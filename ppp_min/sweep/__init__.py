"""Seed sweeps of train.py (``python -m ppp_min.sweep``): the runner and its report."""
