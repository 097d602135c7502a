"""Samples during training: at evaluation time, what the model makes of a few fixed prompts.

Bound in gin as the evaluator's `samples` (see `gin/runs/demo.gin`):

  Evaluator.samples = @TrainingSamples()
  TrainingSamples.prompts = ['text|image|a dog on a beach', 'text|speech|hello', 'image|text|cat.jpg']
  TrainingSamples.sentencepiece_model = %SENTENCEPIECE_MODEL
  TrainingSamples.max_new_tokens = {'text': 32, 'image': 40, 'speech': 100, 'music': 200}
  TrainingSamples.every_evals = 2
  TrainingSamples.image_model = '/models/seed_tokenizer'   # + unclip_model: images in TensorBoard
  ...

Prompts are AnyGPT's base task strings (`anygpt_jax.generation.requests`), rendered once with the
data pipeline's templates; media inputs are tokenized once with the given tokenizers. Every
`every_evals`-th evaluation (and the last step's) decodes them with the trainer's own model,
parameters and mesh through the KV-cache generator (`anygpt_jax.generation.decoding`), under
AnyGPT's per-modality decoding settings (paper Table 9, `generation/settings.py`; `settings`
overrides them) with the modality constraints, and a fixed seed so rounds differ only by the
model. Process 0 then writes, per prompt, into the run's TensorBoard log (`MetricsWriter`):
  - a text summary `samples/{i}_{in}_to_{out}/text`: the prompt, the answer text (role and
    modality tokens stripped) or, for a media answer, its token string;
  - an image summary `.../image` (SEED -> unCLIP) when `image_model` and `unclip_model` are set;
  - an audio summary `.../audio` for speech (SoundStorm + SpeechTokenizer; `speech_model`,
    `soundstorm_model`) or music (Encodec; `music_model`).
Without a de-tokenizer, a media answer appears only as its token string. Each sample is also a
JSON line of `{model_dir}/samples.jsonl` (step, task, prompt and output ids, text, spans with their
codes), written through epath, so a `gs://` run directory works.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping, Sequence

import gin
import jax

from anygpt_jax import filesystem
from anygpt_jax.generation import constraints as cons
from anygpt_jax.generation import requests as requests_lib
from anygpt_jax.generation.settings import SettingsError, defaults_for

SAMPLES_FILE = "samples.jsonl"


class SamplesConfigError(ValueError):
  """A `TrainingSamples` binding that cannot work; the message names it."""


@dataclasses.dataclass
class _Prepared:
  """What stays fixed between rounds: the requests and the generator."""

  tasks: list[requests_lib.Task]
  prompts: list[str]
  requests: list[Any]
  generator: Any
  vocabulary: Any
  stop_ids: tuple[int, ...]


@gin.configurable
class TrainingSamples:
  """Generates for fixed prompts at evaluation time and writes them to TensorBoard.

  Args:
    prompts: AnyGPT base task strings (`text|image|a dog on a beach`, `speech|text|a.wav`, ...).
    sentencepiece_model: the run's SentencePiece model (`%SENTENCEPIECE_MODEL`).
    max_new_tokens: for every output modality, or {modality: count}; a media answer needs room
      for its span (an image: 34 tokens) and the stop id.
    every_evals: generate at every this-many-th evaluation (the first one and the last step's
      always).
    settings: {output modality: {setting: value}} over AnyGPT's defaults, e.g.
      {'text': {'num_beams': 1}} (greedy text instead of 5 beams).
    seed: the sampling seed, the instruction choice and the de-tokenizers' noise.
    image_model, unclip_model, speech_model, soundstorm_model, music_model: local tokenizer
      directories (`anygpt_jax.generation.media.Media`); media inputs need their tokenizer, media
      summaries their de-tokenizer.
    image_steps, soundstorm_steps, music_seconds: de-tokenizer settings (`Media`).
    legacy: the SentencePiece mode of the run's data (`register_corpora.legacy`).
  """

  def __init__(self, prompts: Sequence[str] = gin.REQUIRED, sentencepiece_model: str = gin.REQUIRED,
               max_new_tokens: int | Mapping[str, int] = 64, every_evals: int = 1,
               settings: Mapping[str, Mapping[str, Any]] | None = None, seed: int = 0,
               image_model: str | None = None, unclip_model: str | None = None, speech_model: str | None = None,
               soundstorm_model: str | None = None, music_model: str | None = None, image_steps: int = 20,
               soundstorm_steps: int = 3, music_seconds: float = 5.0, legacy: bool = True):
    from anygpt_jax.generation.media import Media

    self.tasks = []
    for i, raw in enumerate(prompts):
      try:
        self.tasks.append(requests_lib.parse_task(raw))
      except requests_lib.RequestError as e:
        raise SamplesConfigError(f"TrainingSamples.prompts[{i}]: {e}") from None
    if not self.tasks:
      raise SamplesConfigError("TrainingSamples.prompts is empty")
    if every_evals < 1:
      raise SamplesConfigError(f"TrainingSamples.every_evals={every_evals}: expected >= 1")
    modalities = requests_lib.TASK_MODALITIES
    if isinstance(max_new_tokens, Mapping):
      unknown = set(max_new_tokens) - set(modalities)
      if unknown:
        raise SamplesConfigError(f"TrainingSamples.max_new_tokens: unknown modalities {sorted(unknown)}")
      self.max_new_tokens = dict(max_new_tokens)
    else:
      self.max_new_tokens = {m: int(max_new_tokens) for m in modalities}
    self.settings = {m: dict((settings or {}).get(m, {})) for m in modalities}
    if settings and set(settings) - set(modalities):
      raise SamplesConfigError(f"TrainingSamples.settings: unknown modalities {sorted(set(settings) - set(modalities))}")
    self.sentencepiece_model = sentencepiece_model
    self.every_evals = every_evals
    self.seed = seed
    self.legacy = legacy
    self.media = Media(image_model=image_model, unclip_model=unclip_model, speech_model=speech_model,
                       soundstorm_model=soundstorm_model, music_model=music_model, music_seconds=music_seconds,
                       image_steps=image_steps, soundstorm_steps=soundstorm_steps, seed=seed)
    self._rounds = 0
    self._prepared: _Prepared | None = None

  # --- set-up, once -----------------------------------------------------------------------------
  def _prepare(self, run, params: Any) -> _Prepared:
    """Renders the prompts (tokenizing media inputs) and builds the generator over the run's model
    and mesh (`params` are the trainer's, already placed: nothing is copied)."""
    from anygpt_jax.generation.decoding import Generator, Request
    from anygpt_jax.vocabulary.seqio_vocabulary import EOS_ID, AnyGPTVocabulary

    layout = run.layout
    try:
      vocabulary = AnyGPTVocabulary.for_layout(self.sentencepiece_model, layout, self.legacy)
    except ValueError as e:
      raise SamplesConfigError(f"TrainingSamples.sentencepiece_model: {e}") from None
    stop_ids = (EOS_ID, layout.eos_id)
    tables = cons.build_tables(layout, stop_ids, image_length=self.media.image_length,
                               music_codebooks=self.media.music_codebooks)
    renderer = requests_lib.Prompts(vocabulary, self.media, self.seed)
    prompts, requests = [], []
    for i, task in enumerate(self.tasks):
      try:
        text, ids, requested = renderer.prompt(task)
        settings = defaults_for(task.target, stop_ids, **{"max_new_tokens": self.max_new_tokens.get(task.target),
                                                          **self.settings[task.target]})
      except (requests_lib.RequestError, SettingsError) as e:
        raise SamplesConfigError(f"TrainingSamples.prompts[{i}] {task.raw!r}: {e}") from None
      if requested:
        settings = settings.replace(num_beams=1)  # beam search is for text answers
        if settings.max_new_tokens < tables.min_span_tokens(requested) + 1:
          raise SamplesConfigError(
              f"TrainingSamples.max_new_tokens for {requested}: {settings.max_new_tokens} cannot hold a "
              f"{requested} span ({tables.min_span_tokens(requested)} tokens) and the stop id")
      if len(ids) + settings.max_new_tokens > run.config.max_position_embeddings:
        raise SamplesConfigError(
            f"TrainingSamples.prompts[{i}] {task.raw!r}: the prompt ({len(ids)} tokens) + max_new_tokens "
            f"({settings.max_new_tokens}) exceed the model's max_position_embeddings="
            f"{run.config.max_position_embeddings}")
      prompts.append(text)
      requests.append(Request(ids, settings, requested))
    generator = Generator(run.sharded.transformer, params, mesh=run.mesh, rules=run.sharded.rules, constraints=tables)
    return _Prepared(list(self.tasks), prompts, requests, generator, vocabulary, stop_ids)

  # --- every round ------------------------------------------------------------------------------
  def due(self, final: bool = False) -> bool:
    """Counts an evaluation round; whether this one generates."""
    index, self._rounds = self._rounds, self._rounds + 1
    return final or index % self.every_evals == 0

  def write(self, run, step: int, params: Any, writer, final: bool = False) -> list[dict] | None:
    """At an evaluation of `run` (a `loop.Run`) at `step`: generates with `params` (the train
    state's, placed as the trainer places them) when this round is due; process 0 writes the
    summaries through `writer` (a `MetricsWriter`) and the JSON lines. Every process must call
    it (decoding is a collective). Returns the records (None when not due)."""
    if not self.due(final):
      return None
    start = time.perf_counter()
    if self._prepared is None:
      self._prepared = self._prepare(run, params)
    prepared = self._prepared
    outputs = prepared.generator.generate(prepared.requests, seed=self.seed, params=params)
    records = [self._record(step, i, out) for i, out in enumerate(outputs)]
    if jax.process_index() == 0:
      texts, images, audio = {}, {}, {}
      for record in records:
        self._summaries(record, texts, images, audio)
      writer.write_media(step, texts, images, audio)
      writer.flush()
      filesystem.append_json_lines(filesystem.resolve(run.model_dir) / SAMPLES_FILE, records)
      print(f"[anygpt-train] samples at step {step}: {len(records)} prompts in {time.perf_counter() - start:.1f} s "
            f"-> TensorBoard and {run.model_dir / SAMPLES_FILE}", flush=True)
    return records

  def _record(self, step: int, index: int, out) -> dict:
    prepared = self._prepared
    task, request = prepared.tasks[index], prepared.requests[index]
    record = {"step": step, "index": index, "task": task.raw, "prompt": prepared.prompts[index],
              "prompt_ids": list(map(int, request.prompt)), "output_ids": out.tokens,
              "finish_reason": out.finish_reason, "decode_s": out.decode_s,
              "text": requests_lib.answer_text(prepared.vocabulary, out.tokens, prepared.stop_ids)}
    try:
      spans = requests_lib.checked_spans(prepared.vocabulary.layout, task.target, out.tokens,
                                         self.media.music_codebooks)
      record["spans"] = [{"modality": s.modality, "codes": list(s.codes), "closed": s.closed} for s in spans]
    except (requests_lib.RequestError, cons.ConstraintError) as e:
      record["error"] = str(e)
    return record

  def _summaries(self, record: dict, texts: dict, images: dict, audio: dict) -> None:
    """Adds the record's summaries (process 0); a de-tokenizer error goes into its text."""
    task = self._prepared.tasks[record["index"]]
    tag = f"samples/{record['index']:02d}_{task.source}_to_{task.target}"
    lines = [f"**{task.raw}**", "", f"prompt: `{record['prompt']}`", ""]
    if task.target == "text":
      lines.append(f"answer: {record['text']}")
    else:
      # In a code span: TensorBoard renders markdown and would drop '<soim>' as an unknown HTML tag.
      lines.append(f"tokens: `{self._prepared.vocabulary.decode(record['output_ids'])}`")
      if "error" not in record:
        span = record["spans"][0]
        if not self.media.available(task.target):
          lines += ["", f"(no {task.target} de-tokenizer configured: tokens only)"]
        else:
          try:
            if task.target == "image":
              images[f"{tag}/image"] = self.media.image(span["codes"])
            elif task.target == "speech":
              audio[f"{tag}/audio"] = self.media.speech(span["codes"], task.voice_prompt)
            else:
              audio[f"{tag}/audio"] = self.media.music(span["codes"])
            record["summaries"] = [f"{tag}/{'image' if task.target == 'image' else 'audio'}"]
          except (requests_lib.RequestError, ValueError) as e:
            record["error"] = f"de-tokenizing: {e}"
    if "error" in record:
      lines += ["", f"error: {record['error']}"]
    texts[f"{tag}/text"] = "\n".join(lines)
    record["summaries"] = [f"{tag}/text"] + record.get("summaries", [])
