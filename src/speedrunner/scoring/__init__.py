"""Deterministic scoring: node outcomes from logs, speedups, FSR."""
