"""Orbax checkpoints of a run: train state, data iterator state, gin config and vocabulary layout."""

from anygpt_jax.checkpoints.manager import (CheckpointConfig, Checkpoints, IteratorRestore, IteratorSave,
                                            RestoredCheckpoint, StatefulIterator)
