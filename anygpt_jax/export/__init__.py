"""Export to HuggingFace PyTorch layouts for GPU serving."""

from anygpt_jax.export.hf import export_checkpoint, save_hf_checkpoint
