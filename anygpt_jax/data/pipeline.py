"""The training data pipeline: SeqIO tasks and mixtures over pretokenized shards, packed batches.

What the trainer calls:
  * `register_corpora(data_dir, spm_path, corpora=...)` registers one SeqIO Task per corpus
    (`CorpusSpec`: name, kind, shard pattern, X->text probability, mixture group) and the
    mixtures `anygpt_pretrain` (paper Table 7 shares), `anygpt_continue` and `anygpt_sft`
    over whichever of them have shards, plus `mixture_name` over all given corpora with
    token-count rates (for custom corpora such as the demo's `demo_image`, `demo_speech`...).
  * `get_dataset(name, sequence_length, batch_size, ...)` -> tf.data of dicts of int32
    [batch_size, sequence_length]: SeqIO's LM feature names. Each row is packed from one
    corpus; the mixture samples rows by rate (`anygpt_jax.data.packing`).
  * `save_iterator_state` / `restore_iterator_state`: the iterator's position, so a resumed
    run continues with exactly the next batch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Mapping, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from etils import epath

from anygpt_jax.data import mixing, packing, preprocessors, rendering, sources
from anygpt_jax.data.features import BATCH_FEATURES
from anygpt_jax.data.shards import deserialize_sample
from anygpt_jax.errors import UserError
from anygpt_jax.vocabulary.layout import MODALITY_NAMES, VocabularyError, VocabularyLayout
from anygpt_jax.vocabulary.seqio_vocabulary import AnyGPTVocabulary

SPLITS = ("train", "validation")
DEFAULT_PATTERN = "{name}/{name}-{split}-*-of-*"


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
  """One corpus: a task kind, its shards, its X->text probability (pairs), its mixture group.

  `pattern` is a glob with `{name}` and `{split}` placeholders, relative to the data directory
  unless absolute. `corpus` names the shard files' corpus when a task renders another corpus's
  shards (e.g. the continue phase's `journeydb_t2i` reads `journeydb`).
  """

  name: str
  kind: str
  pattern: str = DEFAULT_PATTERN
  to_text_probability: float = 0.5
  group: str = ""
  corpus: str = ""

  def __post_init__(self):
    if self.kind not in rendering.TASK_KINDS:
      raise ValueError(f"corpus {self.name!r}: kind {self.kind!r} not in {rendering.TASK_KINDS}")
    if not 0.0 <= self.to_text_probability <= 1.0:
      raise ValueError(f"corpus {self.name!r}: to_text_probability {self.to_text_probability} outside [0, 1]")

  @property
  def shard_corpus(self) -> str:
    return self.corpus or self.name

  def split_pattern(self, data_dir: str, split: str) -> str:
    pattern = self.pattern.format(name=self.shard_corpus, split=split)
    if "://" in pattern or os.path.isabs(pattern):
      return pattern
    return os.fspath(epath.Path(data_dir) / pattern)


def as_corpus_spec(c) -> CorpusSpec:
  """A CorpusSpec from a spec, a dict, or a tuple (name, kind, pattern[, to_text_probability[, group]])."""
  if isinstance(c, CorpusSpec):
    return c
  if isinstance(c, Mapping):
    return CorpusSpec(**c)
  return CorpusSpec(*c)


DEFAULT_CORPORA = (
    CorpusSpec("laion_2b", "image_text", group="image_text"),
    CorpusSpec("laion_coco", "image_text", group="image_text"),
    CorpusSpec("journeydb", "image_text", group="image_text"),
    CorpusSpec("laion_aesthetics", "image_text", group="image_text"),
    CorpusSpec("mls", "speech_text", group="speech_mls"),
    CorpusSpec("commonvoice", "speech_text", group="speech_cv_gs"),
    CorpusSpec("gigaspeech", "speech_text", group="speech_cv_gs"),
    CorpusSpec("music", "music_text", group="music"),
    CorpusSpec("mmc4", "interleaved", group="interleaved"),
    CorpusSpec("anyinstruct", "chat", group="chat"),
)
# Paper Table 7 sample rates by group; image_text is LAION-2B, LAION-COCO, JourneyDB and
# LAION-Aesthetics together.
PAPER_PRETRAIN_SHARES = {"interleaved": 0.05, "image_text": 0.3, "speech_mls": 0.13, "speech_cv_gs": 0.27,
                         "music": 0.25}
# The high-quality phase: text-to-image from JourneyDB and LAION-Aesthetics, captions from
# LAION-COCO, music. Each task renders another corpus's shards in one direction.
CONTINUE_CORPORA = (
    CorpusSpec("journeydb_t2i", "image_text", to_text_probability=0.0, group="continue", corpus="journeydb"),
    CorpusSpec("laion_aesthetics_t2i", "image_text", to_text_probability=0.0, group="continue",
               corpus="laion_aesthetics"),
    CorpusSpec("laion_coco_caption", "image_text", to_text_probability=1.0, group="continue", corpus="laion_coco"),
    CorpusSpec("music_continue", "music_text", group="continue", corpus="music"),
)
# The built-in mixtures and the corpus groups each is made of.
BUILTIN_MIXTURES = {"anygpt_pretrain": tuple(PAPER_PRETRAIN_SHARES), "anygpt_continue": ("continue",),
                    "anygpt_sft": ("chat",)}


class DataRegistrationError(UserError, ValueError):
  """The data a run names cannot be registered: the message says what is wrong and where."""


class MissingCorpusError(DataRegistrationError):
  """A corpus a mixture is made of has no shards."""


@dataclasses.dataclass
class TaskInfo:
  """What registration learned about one task (for rates, windows and the mixture report)."""

  spec: CorpusSpec
  files: dict                      # split -> shard files
  stats: dict                      # split -> mixing.CorpusStats or None
  chars_per_token: float = 0.0
  template_tokens_per_record: float = 0.0
  mean_tokens_per_record: float = 0.0

  def tokens(self, split: str = "train") -> float:
    """Estimated tokens of one epoch of `split` (0 when no stats file exists)."""
    s = self.stats.get(split)
    if s is None:
      return 0.0
    return s.total_tokens(self.chars_per_token, self.template_tokens_per_record)

  def modality_tokens(self, split: str = "train") -> dict:
    """Tokens per modality ('text' estimated, template included) of one epoch."""
    s = self.stats.get(split)
    if s is None:
      return {}
    out = dict(s.modality_tokens)
    out["text"] = s.text_tokens(self.chars_per_token) + self.template_tokens_per_record * s.records
    return out


TASK_INFO: dict[str, TaskInfo] = {}


# --- measuring a corpus --------------------------------------------------------------------
def _sample_records(files: Sequence[str], limit: int):
  samples = []
  for path in files:
    try:
      for record in tf.data.TFRecordDataset(path).take(limit - len(samples)):
        samples.append(deserialize_sample(record.numpy()))
    except tf.errors.DataLossError as e:
      raise corrupt_shard_error([path], e) from e
    if len(samples) >= limit:
      break
  return samples


def measure_corpus(info: TaskInfo, vocabulary: AnyGPTVocabulary, pools: Mapping[str, Sequence[str]],
                   num_records: int = 64) -> None:
  """Fills chars/token, template tokens and mean tokens per record from the first records.

  Text tokens are estimated as text_chars / chars_per_token, where chars_per_token is measured
  by encoding the sample records' text parts; the template overhead is the rendered length of
  the sample records minus their codes and text tokens (direction mix weighted by the corpus's
  X->text probability).
  """
  samples = _sample_records(info.files.get("train") or info.files.get("validation") or [], num_records)
  if not samples:
    return
  layout, spec = vocabulary.layout, info.spec
  texts = [p.text for s in samples for p in s.parts if p.kind == "text" and p.text]
  info.chars_per_token = mixing.measure_chars_per_token(texts, vocabulary.encode_text) if texts else 4.0
  rendered, content = [], []
  for i, s in enumerate(samples):
    try:
      _ = [layout.code_to_id(p.kind, p.codes) for p in s.parts if p.kind != "text"]
    except VocabularyError:
      continue  # a bad record fails in the pipeline itself, naming its shard; not measured here
    codes = sum(len(p.codes) for p in s.parts)
    text_tokens = sum(len(vocabulary.encode_text(p.text)) for p in s.parts if p.kind == "text" and p.text)
    if spec.kind in rendering.PAIR_KINDS:
      m = rendering.PAIR_KINDS[spec.kind]
      p = spec.to_text_probability
      to_text = len(rendering.reference_ids(vocabulary, spec.kind, s.parts, pools[m, "to_text"][i % len(
          pools[m, "to_text"])], True))
      from_text = len(rendering.reference_ids(vocabulary, spec.kind, s.parts, pools[m, "from_text"][i % len(
          pools[m, "from_text"])], False))
      rendered.append(p * to_text + (1 - p) * from_text)
    else:
      rendered.append(len(rendering.reference_ids(vocabulary, spec.kind, s.parts)))
    content.append(codes + text_tokens)
  if not rendered:
    return
  info.mean_tokens_per_record = float(np.mean(rendered))
  info.template_tokens_per_record = float(np.mean(rendered) - np.mean(content))


# --- registration --------------------------------------------------------------------------
def load_instruction_pools(directory=None, modalities: Sequence[str] = MODALITY_NAMES) -> dict:
  """(modality, direction) -> the instructions of `modalities` (those of the registered pair corpora)."""
  return {(m, d): rendering.load_instructions(m, d, directory) for m in modalities for d in rendering.DIRECTIONS}


def corpus_files(spec: CorpusSpec, data_dir: str) -> dict[str, list[str]]:
  """split -> the corpus's shard files under `data_dir` (splits without files left out)."""
  files = {split: sources.shard_files(spec.split_pattern(data_dir, split), spec.shard_corpus, split)
           for split in SPLITS}
  return {split: f for split, f in files.items() if f}


def _register_task(spec: CorpusSpec, files: Mapping[str, Sequence[str]], vocabulary: AnyGPTVocabulary, pools,
                   shuffle_buffer_size: int, measure_records: int) -> TaskInfo:
  if spec.kind == "chat" and not vocabulary.layout.chat_tokens:
    raise DataRegistrationError(
        f"chat corpus {spec.name!r} needs a vocabulary with the chat tokens <-Res-> <-Ins->: set "
        "register_corpora.chat_tokens=True and vocabulary_layout.chat_tokens=True (the run files' CHAT_TOKENS)")
  renderer = rendering.GraphRenderer(vocabulary)
  if spec.kind in rendering.PAIR_KINDS:
    m = rendering.PAIR_KINDS[spec.kind]
    render = seqio.utils.add_kwargs_to_transform(
        preprocessors.render_pairs, renderer=renderer, kind=spec.kind,
        to_text_probability=spec.to_text_probability,
        to_text_instructions=pools[m, "to_text"], from_text_instructions=pools[m, "from_text"])
  else:
    render = seqio.utils.add_kwargs_to_transform(preprocessors.render_unprompted, renderer=renderer, kind=spec.kind)
  records = {split: [sources.count_records(f) for f in fs] for split, fs in files.items()}
  source = sources.ShardSource(spec.name, files, records, preprocessors.read_shard_file)
  if spec.name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(spec.name)
  seqio.TaskRegistry.add(
      spec.name, source=source,
      preprocessors=[seqio.CacheDatasetPlaceholder(), render],
      output_features={"targets": seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32)},
      shuffle_buffer_size=shuffle_buffer_size)
  stats = {split: mixing.read_corpus_stats(f) for split, f in files.items()}
  info = TaskInfo(spec, dict(files), stats)
  measure_corpus(info, vocabulary, pools, measure_records)
  TASK_INFO[spec.name] = info
  return info


def _register_mixture(name: str, rates: Mapping[str, float]) -> None:
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, [(task, rate) for task, rate in rates.items() if rate > 0])


def token_rates(names: Sequence[str], temperature: float = 1.0, cap: float | None = None,
                oversample: Mapping[str, float] | None = None) -> dict[str, float]:
  """Rates over registered tasks from their estimated train tokens (equal when none has stats)."""
  tokens = {n: TASK_INFO[n].tokens("train") for n in names}
  if sum(tokens.values()) <= 0:
    tokens = {n: 1.0 for n in names}
  return mixing.temperature_rates(tokens, temperature, cap, {k: v for k, v in (oversample or {}).items() if k in tokens})


@dataclasses.dataclass
class Registration:
  vocabulary: AnyGPTVocabulary
  tasks: list
  mixtures: dict  # name -> {task: rate}


def mixture_members(mixture_name: str | None, specs: Sequence[CorpusSpec]) -> list[CorpusSpec]:
  """The corpora a mixture is made of: a built-in's groups, or all given corpora for another name."""
  if mixture_name in BUILTIN_MIXTURES:
    groups = BUILTIN_MIXTURES[mixture_name]
    members = [s for s in specs if s.group in groups]
    if not members:
      raise DataRegistrationError(
          f"mixture {mixture_name!r} is made of the corpus groups {list(groups)}, but none of the corpora "
          f"{[s.name for s in specs]} is in one (give each CorpusSpec its group)")
    return members
  return list(specs)


def _with_continue_tasks(specs: list[CorpusSpec]) -> list[CorpusSpec]:
  """Adds the continue phase's tasks over whichever of their corpora are given."""
  names = {s.name for s in specs}
  return specs + [c for c in CONTINUE_CORPORA if c.shard_corpus in names and c.name not in names]


def _missing_message(mixture_name: str, missing: Sequence[CorpusSpec], data_dir: str) -> str:
  where = "; ".join(f"{s.name}: {s.split_pattern(data_dir, 'train')}" for s in missing)
  hint = "" if epath.Path(data_dir).exists() else f" (the data directory {data_dir} does not exist)"
  return (f"mixture {mixture_name!r}: {len(missing)} corpora have no train shards{hint}: {where}. Tokenize them "
          f"(anygpt-tokenize --corpus NAME --output_dir DATA_DIR/NAME), list only the corpora you have in "
          f"register_corpora.corpora, or set register_corpora.allow_missing_corpora=True to mix the others "
          f"with renormalised shares")


def _mixture_rates(mixture_name: str, present: Sequence[CorpusSpec], shares, temperature, cap,
                   oversample) -> dict[str, float]:
  names = [s.name for s in present]
  if mixture_name == "anygpt_pretrain":
    members = {}
    for spec in present:
      members.setdefault(spec.group, []).append(spec.name)
    tokens = {n: TASK_INFO[n].tokens("train") for n in names}
    return mixing.group_rates(shares, members, tokens, temperature, cap, oversample)
  return token_rates(names, temperature, cap, oversample)


@gin.configurable
def register_corpora(data_dir: str = gin.REQUIRED, spm_path: str = gin.REQUIRED, corpora: Sequence | None = None, *,
                     mixture_name: str | None = None, chat_tokens: bool = False, legacy: bool = True,
                     pad_multiple: int = 128, instructions_dir: str | None = None, default_mixtures: bool = False,
                     allow_missing_corpora: bool = False, pretrain_shares: Mapping[str, float] | None = None,
                     temperature: float = 1.0, cap: float | None = None,
                     oversample: Mapping[str, float] | None = None, shuffle_buffer_size: int = 1000,
                     measure_records: int = 64) -> Registration:
  """Registers a SeqIO Task per corpus with shards under `data_dir`, and the run's mixture.

  Args:
    data_dir: root of the shard patterns (`{corpus}/{corpus}-{split}-00000-of-00008` files);
      local, relative or gs://.
    spm_path: the SentencePiece model; the vocabulary layout follows its size.
    corpora: CorpusSpecs, dicts or tuples `(name, kind, pattern[, to_text_probability[, group]])`;
      default `DEFAULT_CORPORA`. The continue phase's tasks are added over their corpora.
    mixture_name: the mixture the run reads (or the name of one corpus: that task alone). A built-in name (`anygpt_pretrain`: paper Table 7
      shares by group, split inside a group by tokens; `anygpt_continue`; `anygpt_sft`) is made
      of the given corpora in its groups; any other name of all given corpora, by token counts.
      Every member must have train shards (MissingCorpusError names the absent ones) unless
      `allow_missing_corpora`, which mixes the others and logs a warning with the new shares.
      None registers every given corpus that has shards, and no mixture.
    chat_tokens: the layout has `<-Res->`/`<-Ins->` (needed by chat corpora).
    legacy: the text tokenization mode, see `anygpt_jax.vocabulary.seqio_vocabulary`; True
      (the default) is AnyGPT's pinned transformers 4.34.1 LlamaTokenizer.
    default_mixtures: also register each built-in mixture all of whose corpora have shards.
    pretrain_shares: group -> share for `anygpt_pretrain` (default: paper Table 7).
    temperature, cap, oversample: the token-count rate function (`mixing.temperature_rates`).
  Returns:
    a Registration: the vocabulary, the registered task names and the mixtures' rates.
  """
  if data_dir is None:
    raise DataRegistrationError("register_corpora: no data directory; set DATA_DIR (--gin.DATA_DIR=/data/shards), "
                                "the root of the tokenization job's shards")
  if not epath.Path(spm_path).exists():
    raise DataRegistrationError(f"register_corpora: the SentencePiece model {spm_path} does not exist "
                                "(SENTENCEPIECE_MODEL)")
  if (mixture_name is not None and mixture_name not in BUILTIN_MIXTURES and corpora is None
      and mixture_name not in {c.name for c in DEFAULT_CORPORA + CONTINUE_CORPORA}):
    raise DataRegistrationError(
        f"mixture {mixture_name!r} is not a built-in mixture ({', '.join(BUILTIN_MIXTURES)}); a mixture of your "
        "own needs its corpora in register_corpora.corpora")
  vocabulary = AnyGPTVocabulary(spm_path, chat_tokens=chat_tokens, pad_multiple=pad_multiple, legacy=legacy)
  given = [as_corpus_spec(c) for c in (DEFAULT_CORPORA if corpora is None else corpora)]
  specs = _with_continue_tasks(given)
  names = {s.name: s for s in specs}
  if mixture_name in names:  # a single task: MIXTURE_OR_TASK_NAME names a corpus
    wanted = [names[mixture_name]]
  elif mixture_name is None and corpora is not None:
    wanted = given
  elif mixture_name is None or default_mixtures:
    wanted = specs
  elif mixture_name in BUILTIN_MIXTURES:
    wanted = mixture_members(mixture_name, specs)
  else:
    wanted = given
  files = {s.name: corpus_files(s, data_dir) for s in wanted}
  present = [s for s in wanted if files[s.name].get("train")]
  # Only the pair corpora's modalities need instruction pools (a new modality needs one once it has a corpus).
  pools = load_instruction_pools(instructions_dir, sorted({rendering.PAIR_KINDS[s.kind] for s in present
                                                           if s.kind in rendering.PAIR_KINDS}))
  tasks, mixtures = [], {}
  for spec in present:
    if spec.kind == "chat" and not chat_tokens and mixture_name is None and corpora is None:
      continue  # the default corpora's chat corpus needs a chat vocabulary (SFT runs)
    _register_task(spec, files[spec.name], vocabulary, pools, shuffle_buffer_size, measure_records)
    tasks.append(spec.name)
  shares = dict(pretrain_shares or PAPER_PRETRAIN_SHARES)
  if mixture_name in names:
    if mixture_name not in tasks:
      raise MissingCorpusError(_missing_message(mixture_name, wanted, data_dir))
  elif mixture_name is not None:
    members = mixture_members(mixture_name, wanted)
    missing = [s for s in members if s.name not in tasks]
    if missing and not allow_missing_corpora or len(missing) == len(members):
      raise MissingCorpusError(_missing_message(mixture_name, missing, data_dir))
    mixtures[mixture_name] = _mixture_rates(mixture_name, [s for s in members if s.name in tasks], shares,
                                            temperature, cap, oversample)
    if missing:
      logging.warning("mixture %r without %s (no train shards, allow_missing_corpora=True); shares now: %s",
                      mixture_name, [s.name for s in missing],
                      ", ".join(f"{k} {v:.2%}" for k, v in mixtures[mixture_name].items()))
  if default_mixtures:
    for name in BUILTIN_MIXTURES:
      if name in mixtures:
        continue
      members = [s for s in specs if s.group in BUILTIN_MIXTURES[name]]
      if members and all(s.name in tasks for s in members):
        mixtures[name] = _mixture_rates(name, members, shares, temperature, cap, oversample)
  for name, rates in mixtures.items():
    _register_mixture(name, rates)
  return Registration(vocabulary, tasks, mixtures)


def registered_provider(name: str, what: str = "MIXTURE_OR_TASK_NAME"):
  """The SeqIO task or mixture `name`; an error saying what is registered when it is not."""
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError:
    tasks = sorted(TASK_INFO)
    mixtures = sorted(set(seqio.MixtureRegistry.names()) & (set(BUILTIN_MIXTURES) | {
        m for m in seqio.MixtureRegistry.names() if m not in seqio.TaskRegistry.names()}))
    raise DataRegistrationError(
        f"{what}={name!r} is not a registered task or mixture. Registered by register_corpora: tasks {tasks}, "
        f"mixtures {mixtures}" + ("" if tasks else " (nothing: bind train.data_registration = @register_corpora "
                                  "with register_corpora.data_dir and spm_path, as gin/runs/base.gin does)")) from None


def check_host_shares(name: str, split: str, num_shards: int) -> None:
  """Raises HostShareError (corpus, hosts, files) when some input shard would read no record of `split`."""
  provider = registered_provider(name)
  for task in (provider.tasks if isinstance(provider, seqio.Mixture) else [provider]):
    if split in task.splits and isinstance(task.source, sources.ShardSource):
      task.source.host_plan(split, 0, num_shards)


def mixture_tasks(name: str, split: str) -> list[str]:
  """The tasks of a registered task or mixture that have `split`, in the mixture's order."""
  provider = registered_provider(name)
  tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
  return [t.name for t in tasks if split in t.splits]


# --- datasets ------------------------------------------------------------------------------
def _tasks_and_rates(name: str, split: str):
  provider = registered_provider(name)
  if isinstance(provider, seqio.Mixture):
    pairs = [(t, provider.get_rate(t)) for t in provider.tasks]
  else:
    pairs = [(provider, 1.0)]
  pairs = [(t, r) for t, r in pairs if split in t.splits and r > 0]
  if not pairs:
    raise DataRegistrationError(f"{name!r} has no task with a {split!r} split: tokenize one with "
                                f"anygpt-tokenize --split {split}")
  return pairs


def _window(task_name: str, sequence_length: int, rows_per_window: int) -> int:
  info = TASK_INFO.get(task_name)
  mean = info.mean_tokens_per_record if info and info.mean_tokens_per_record else 256.0
  return int(np.clip(np.ceil(rows_per_window * sequence_length / mean), 16, 65536))


def mixture_rates(mixture_or_task_name: str, split: str = "train") -> dict[str, float]:
  """{task name: its mixing rate} of a registered task or mixture, for `split`."""
  return {task.name: float(rate) for task, rate in _tasks_and_rates(mixture_or_task_name, split)}


def input_files(mixture_or_task_name: str, split: str = "train", shard_index: int = 0,
                num_shards: int = 1) -> list[str]:
  """The shard files that input shard `shard_index` of `num_shards` reads, every task of the mixture."""
  files = []
  for task, _ in _tasks_and_rates(mixture_or_task_name, split):
    source = task.source
    if isinstance(source, sources.ShardSource):
      files += source.host_plan(split, shard_index, num_shards).files
    else:
      files += source.list_shards(split)
  return files


def corrupt_shard_error(files: Sequence[str], error: Exception) -> sources.CorruptShardError:
  """The error for a read failure of the data stream: each of `files` whose records do not read,
  named with TensorFlow's reason (tf.data's own error names no file)."""
  bad = [f"{f}: {reason}" for f in files if (reason := sources.read_error(f)) is not None]
  if not bad:
    return sources.CorruptShardError(f"reading the data failed ({error}), though each of its {len(files)} shard "
                                     "files reads alone")
  return sources.CorruptShardError("corrupt shard file" + ("s" if len(bad) > 1 else "") + ": " + "; ".join(bad)
                                   + ". Tokenize it again, or leave it out of the corpus.")


STAT_FEATURES = ("num_overlong", "num_skipped")  # int32 [B] counts on a window's first row (`packing`)


@gin.configurable
def get_dataset(mixture_or_task_name: str, sequence_length: int, batch_size: int, split: str = "train",
                seed: int = 0, shuffle: bool = True, shard_index: int = 0, num_shards: int = 1, pack: bool = True,
                overlong: str = "drop", num_epochs: int | None = -1, rows_per_window: int = 64,
                with_stats: bool = False, drop_remainder: bool = True) -> tf.data.Dataset:
  """Batches of SeqIO LM features for a registered task or mixture.

  Args:
    mixture_or_task_name: a name registered by `register_corpora` (or any SeqIO task whose
      preprocessors give `targets` and `loss_weights`).
    sequence_length: row length L.
    batch_size: rows per batch B (per host).
    split: 'train' or 'validation' (tasks without that split are left out of a mixture).
    seed: fixes file order, shuffles, directions, instructions and the mixture's draws.
    shard_index, num_shards: this host's part of the input (by files when there are enough).
    pack: pack whole samples of one corpus per row; else one sample per row.
    overlong: 'drop' or 'trim' samples longer than L.
    num_epochs: -1 (default) repeats forever for 'train' and reads once otherwise; None repeats.
    rows_per_window: packing window in rows of one corpus (bounds memory and the latency of the
      first batch; a window's short rows are carried into the next, see `packing`).
    with_stats: keep `STAT_FEATURES` (per row: `num_overlong`, the overlong samples dropped or
      trimmed, and `num_skipped`, the records the renderer could not take and left out).
  Returns:
    tf.data.Dataset of dicts: decoder_input_tokens, decoder_target_tokens, decoder_loss_weights,
    decoder_segment_ids, decoder_positions, each int32 [B, L].
  """
  if num_epochs == -1:
    num_epochs = None if split == "train" else 1
  pairs = _tasks_and_rates(mixture_or_task_name, split)
  shard_info = seqio.ShardInfo(shard_index, num_shards) if num_shards > 1 else None
  rows = []
  for i, (task, _) in enumerate(pairs):
    ds = task.get_dataset({"targets": sequence_length}, split=split, use_cached=False, shuffle=shuffle,
                          seed=seed + 7919 * i, shard_info=shard_info, num_epochs=num_epochs,
                          trim_output_features=False)
    if pack:
      ds = packing.pack_dataset(ds, sequence_length, _window(task.name, sequence_length, rows_per_window), overlong,
                                name=task.name)
    else:
      ds = packing.pad_dataset(ds, sequence_length, overlong)
    rows.append(ds)
  if len(rows) == 1:
    ds = rows[0]
  else:
    weights = np.array([r for _, r in pairs], np.float64)
    ds = tf.data.Dataset.sample_from_datasets(rows, weights=list(weights / weights.sum()), seed=seed,
                                              stop_on_empty_dataset=False)
  keys = BATCH_FEATURES + (STAT_FEATURES if with_stats else ())

  @tf.autograph.experimental.do_not_convert
  def select(ex):
    return {k: ex[k] for k in keys}

  ds = ds.map(select)
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options).prefetch(2)


def save_iterator_state(iterator, path: str) -> str:
  """Writes a tf.data iterator's position; returns the checkpoint prefix written."""
  return tf.train.Checkpoint(iterator=iterator).write(path)


def restore_iterator_state(iterator, path: str) -> None:
  """Moves a fresh iterator of the same `get_dataset` call to the position saved at `path`."""
  tf.train.Checkpoint(iterator=iterator).read(path).assert_consumed()
