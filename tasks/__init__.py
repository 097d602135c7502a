"""AnyGPT's task data that is not code: the instruction pools (`instructions/`).

Tasks and mixtures are registered in one way only: `anygpt_jax.data.pipeline.register_corpora`,
which every run file binds from its `DATA_DIR` and `SENTENCEPIECE_MODEL` (`gin/runs/base.gin`:
`train.data_registration = @register_corpora`) and which `anygpt-mixture-report` calls through
the same gin files. Importing this package registers nothing.
"""
