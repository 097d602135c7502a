"""Training data: the shard schema, AnyGPT's rendering, packing, mixing and the SeqIO pipeline.

  shards.py         the pretokenized TFRecord schema (shared with the tokenizer workers)
  features.py       the feature names of a training batch (shared with the trainer)
  rendering.py      templates, chats and interleaved documents -> ids and loss weights (tf.data)
  sources.py        which files are shards, how hosts share them, the SeqIO data source
  preprocessors.py  SeqIO preprocessors: read shards with their file names, parse, render
  packing.py        first-fit-decreasing packing of one corpus into LM-feature rows
  mixing.py         token counts from the tokenization stats, rate functions
  pipeline.py       register_corpora, get_dataset, iterator state
"""
