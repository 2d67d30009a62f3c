"""Datasets for the CPU-scale benchmarks: shard format and corpus preparation."""
