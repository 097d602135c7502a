"""Any-to-any generation: KV-cache decoding, beam search and modality-constrained sampling.

The decoder (`decoding`: JAX) is imported when first named, so the request, settings and
constraint modules serve boxes without JAX (anygpt-eval's scoring stage reads requests too).
"""

from anygpt_jax.generation.constraints import ConstraintError, ConstraintTables, build_tables, find_spans
from anygpt_jax.generation.settings import MODALITY_DEFAULTS, DecodingSettings, SettingsError, defaults_for

_DECODING = ("GenerationError", "Generator", "Output", "Request")


def __getattr__(name: str):
  if name in _DECODING:
    from anygpt_jax.generation import decoding
    return getattr(decoding, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
