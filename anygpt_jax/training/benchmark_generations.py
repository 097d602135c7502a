"""Benchmark answers during training: a hook that, at chosen steps, answers fixed benchmark subsets with
the trainer's own parameters on its mesh, where `anygpt-eval score` reads them.

  train.hooks = [@BenchmarkGenerations()]
  BenchmarkGenerations.prompts = ['gs://bucket/eval_prompts/coco_caption/prompts.json',
                                  'gs://bucket/eval_prompts/librispeech_asr/prompts.json']
  BenchmarkGenerations.sentencepiece_model = %SENTENCEPIECE_MODEL
  BenchmarkGenerations.every = 5000

Each prompts file is written once by `anygpt-eval prompts` on a box with the tokenizers (its input
media as token strings, `evaluation.prompts`), so the trainer loads no tokenizer and no torch. At step
N every process decodes the same requests (decoding is a collective) and process 0 writes, for each
benchmark, `{model_dir}/benchmarks/step_{N:08d}/{benchmark}/run.json` (model: the run directory, step
N) and `generations-00000-of-00001.jsonl`, the generation stage's layout (`evaluation.report`), then
`complete.json`. `anygpt-eval score --watch {model_dir}` on a box with the evaluator models scores each
step as it completes (`evaluation.watch`) and writes the scores into the run's TensorBoard at that
step, beside the loss curves.
Decoding follows the paper's settings per output modality (`generation/settings.py`); `settings`
overrides them (e.g. greedy text and short answers for a quick curve).
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import gin
import jax

from anygpt_jax.evaluation.generation import Request, decoding_settings, generate_benchmark
from anygpt_jax.evaluation.prompts import read_prompts
from anygpt_jax.evaluation.watch import mark_complete, step_directory
from anygpt_jax.generation.requests import TASK_MODALITIES


class BenchmarkGenerationsError(ValueError):
  """A `BenchmarkGenerations` binding that cannot work; the message names it."""


@gin.configurable
class BenchmarkGenerations:
  """A training hook (`training/hooks.py`): benchmark answers every `every` steps (and at the last).

  Args:
    prompts: prompts files of `anygpt-eval prompts` (`{out}/{benchmark}/prompts.json`), one per
      benchmark subset; read when the run starts, so a bad path fails before the first step.
    sentencepiece_model: the run's SentencePiece model (`%SENTENCEPIECE_MODEL`).
    every: the period in steps; at_last: also at the run's last step.
    batch_size: requests decoded together.
    settings: {output modality: {setting: value}} over the paper's decoding settings.
    seed: the decoding seed and the instruction draws (the same at every step, so curves differ
      only by the model).
    legacy: the SentencePiece mode of the run's data (`register_corpora.legacy`).
  """

  def __init__(self, prompts: Sequence[str] = gin.REQUIRED, sentencepiece_model: str = gin.REQUIRED,
               every: int = 1000, at_last: bool = True, batch_size: int = 16,
               settings: Mapping[str, Mapping[str, Any]] | None = None, seed: int = 0, legacy: bool = True):
    if not prompts:
      raise BenchmarkGenerationsError("BenchmarkGenerations.prompts is empty")
    unknown = set(settings or {}) - set(TASK_MODALITIES)
    if unknown:
      raise BenchmarkGenerationsError(f"BenchmarkGenerations.settings: unknown modalities {sorted(unknown)}")
    self.prompts = [read_prompts(path) for path in prompts]
    self.sentencepiece_model, self.legacy, self.seed = sentencepiece_model, legacy, seed
    self.every, self.at_last, self.batch_size = every, at_last, batch_size
    self.overrides = {m: dict((settings or {}).get(m, {})) for m in TASK_MODALITIES}
    self._session = None

  def _open(self, run, params):
    """A generation session over the trainer's model and mesh, with no tokenizer (the prompts carry
    their media as token strings)."""
    from anygpt_jax.generation.loading import LoadedModel
    from anygpt_jax.generation.media import Media
    from anygpt_jax.generation.session import SessionError, open_session

    loaded = LoadedModel(run.config, params, run.layout, self.sentencepiece_model, str(run.model_dir), self.legacy)
    try:  # no tokenizer in Media(): AnyGPT's span shapes (32 image codes, 4 music codebooks)
      return open_session(loaded, Media(), self.overrides, self.seed, model=run.sharded.transformer, mesh=run.mesh,
                          rules=run.sharded.rules)
    except SessionError as e:
      raise BenchmarkGenerationsError(f"BenchmarkGenerations.sentencepiece_model: {e}") from None

  def __call__(self, info) -> None:
    start = time.perf_counter()
    if self._session is None:
      self._session = self._open(info.run, info.state.params)
    out = step_directory(info.run.model_dir, info.step)
    writer = jax.process_index() == 0
    for prompts in self.prompts:
      requests = [Request(position, item_id, task, error)
                  for position, (item_id, task, error) in enumerate(prompts.items)]
      run = {"benchmark": prompts.benchmark, "model": str(info.run.model_dir), "step": info.step,
             "data": prompts.data, "limit": prompts.limit, "seed": prompts.seed, "num_processes": 1,
             "settings": decoding_settings(self._session, requests)}
      generate_benchmark(self._session, prompts.benchmark, requests, str(out), run, batch_size=self.batch_size,
                         seed=self.seed, params=info.state.params, writer=writer, answer_files=False,
                         log=lambda line: None)
    if writer:
      mark_complete(info.run.model_dir, info.step, [p.benchmark for p in self.prompts])
      print(f"[anygpt-train] benchmark answers at step {info.step}: "
            f"{', '.join(p.benchmark for p in self.prompts)} in {time.perf_counter() - start:.1f} s -> {out} "
            f"(score: anygpt-eval score --watch {info.run.model_dir})", flush=True)
