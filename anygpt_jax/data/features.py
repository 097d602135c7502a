"""The feature names of a training batch: what the data pipeline yields and the trainer consumes.

SeqIO's decoder-only LM features, each int32 [batch, sequence_length]. Pure Python, so the
trainer can name them without importing the TensorFlow pipeline.
"""

BATCH_FEATURES = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
                  "decoder_segment_ids", "decoder_positions")
