"""Evaluation: sampling, the benchmarks (FID, GenEval, DPG-Bench), diversity, callback."""
