"""anygpt_jax: AnyGPT-style any-to-any multimodal LLaMA-2 training on JAX.

The installed package holds everything: the library (vocabulary, model, data, tokenizers,
training, checkpoints, weights, export, generation, serving, evaluation), the command-line layer
the commands share (`anygpt_jax.cli`), the commands (`anygpt_jax.tools`, the repository's
`tools/`), the instruction pools (`anygpt_jax.tasks`, from `tasks/`), the gin files
(`anygpt_jax/gin`, from `gin/`: `anygpt-train --gin_file=runs/demo.gin` finds them from any
directory) and tiny random-weight fixtures for the demo and the tests (`anygpt_jax.testing`).
Importing it imports nothing.
"""
