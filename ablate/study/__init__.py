"""Studies: a design-space grid (``grid``) or an optuna search (``sweep``) over run specs,
their results as one table (``results``) and comparison plots (``plots``)."""
