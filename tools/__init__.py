"""Tools apart from the pipeline: the benchmark, the trivial baseline and the synthetic data generator."""
