"""SeqIO task and mixture registrations of anygpt_jax, and the instruction pools (`instructions/`).

Importing this package registers the default corpora (laion_coco, journeydb, mls, commonvoice,
gigaspeech, music, mmc4, anyinstruct: whichever have shards) and the mixtures `anygpt_pretrain`,
`anygpt_continue`, `anygpt_sft` when the environment names the data:

  ANYGPT_DATA_DIR    root of the shards (`{corpus}/{corpus}-{split}-00000-of-00008`)
  ANYGPT_SPM_PATH    the SentencePiece model
  ANYGPT_CHAT_TOKENS 1 to include the chat tokens (needed for anyinstruct / anygpt_sft)

Without them nothing is registered; call `anygpt_jax.data.pipeline.register_corpora(...)`
(gin-configurable, so a run file can bind `register_corpora.data_dir` and friends) instead.
"""

import os

from anygpt_jax.data import pipeline

REGISTRATION = None
if os.environ.get("ANYGPT_DATA_DIR") and os.environ.get("ANYGPT_SPM_PATH"):
  REGISTRATION = pipeline.register_corpora(
      os.environ["ANYGPT_DATA_DIR"], os.environ["ANYGPT_SPM_PATH"],
      chat_tokens=os.environ.get("ANYGPT_CHAT_TOKENS", "0") == "1")
