"""The paper's benchmarks as a two-stage job (`anygpt-eval`): items and requests (`benchmarks`),
generation on the model's mesh (`tools/eval.py generate`), scoring and reports (`report`, `metrics`)."""
