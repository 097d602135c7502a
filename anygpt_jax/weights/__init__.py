"""Reading model weights in the layouts users have (HF safetensors/.bin, Meta .pth) into this model."""

from anygpt_jax.weights.checks import SourceConfigError, check_source_config
from anygpt_jax.weights.sources import SourceCheckpoint, WeightsFormatError, open_source
