"""Any-to-any generation: KV-cache decoding, beam search and modality-constrained sampling."""

from anygpt_jax.generation.constraints import ConstraintError, ConstraintTables, build_tables, find_spans
from anygpt_jax.generation.decoding import GenerationError, Generator, Output, Request
from anygpt_jax.generation.settings import MODALITY_DEFAULTS, DecodingSettings, SettingsError, defaults_for
