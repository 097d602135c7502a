"""Tiny random-weight fixtures for the demo and the tests, not for production.

Nothing here is trained or meant to produce meaningful output: these modules write small models
with random weights in the real published file layouts, so the loaders a user runs on real
checkpoints are the code under test, and build a small corpus in seconds. `anygpt-demo` uses them
to run the whole pipeline on a CPU; the tests use them as fixtures.

  tiny_tokenizers  SEED, SpeechTokenizer, SoundStorm, Encodec 32 kHz and unCLIP checkpoints (PyTorch)
  demo_corpus      a small raw corpus (images, speech, music + captions) and its manifest
  hf_reference     a random transformers LlamaForCausalLM with a model's configuration (parity checks)
  synthetic_corpus random pretokenized corpora in the shard schema, with their stats (the data
                   tests and `tools/bench_pipeline.py`)

Importing this package imports nothing; tiny_tokenizers and demo_corpus import no JAX or
TensorFlow (they run with the tokenizers), hf_reference needs torch and transformers,
synthetic_corpus TensorFlow.
"""
