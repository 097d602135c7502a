"""AnyGPT's expanded vocabulary: the id layout and the token string forms."""

from anygpt_jax.vocabulary.layout import (CONTENT_KINDS, MODALITIES, MODALITY_NAMES, VocabularyError,
                                          VocabularyLayout, control_token_in_text, modality_codes_from_string,
                                          split_added_tokens, target_modality)
