"""The scorers: the benchmarks' own reading and scoring rules (GenEval's, DPG-Bench's, FID,
diversity), independent of training. The metric plugins in ``ablate/eval/metrics/`` call
them from a run; these modules never import a model or a run."""
