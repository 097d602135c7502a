"""Serving a trained model over HTTP in OpenAI's request shapes (`anygpt-serve`).

`protocol` reads OpenAI's chat-completions and completions bodies into the project's requests;
`service` renders prompts and turns answers into text and media, as `anygpt-generate` does;
`engine` decodes (the JAX generator in-process, batched by a bounded window), `vllm_engine` sends
token ids to a vLLM server instead, whose sampler runs `vllm_constraints` (imported only inside
vLLM's environment); `app` is the FastAPI front. The model and data code know nothing of serving.
"""
