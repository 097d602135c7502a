"""Speech corpora as distributed: Multilingual LibriSpeech, Common Voice, GigaSpeech.

  MLS          `<split>/transcripts.txt`: `{speaker}_{book}_{segment}<TAB>text` per line, audio at
               `<split>/audio/{speaker}/{book}/{speaker}_{book}_{segment}.flac` (or `.opus`).
  Common Voice `<lang>/<split>.tsv` with `path` and `sentence` columns (and others), mp3 clips in
               `<lang>/clips/`.
  GigaSpeech   `GigaSpeech.json`: `{"audios": [{"aid", "path", "segments": [{"sid", "begin_time",
               "end_time", "text_tn"}]}]}`, long opus files cut at the segments' times
               (seconds), with no unpacking: the job seeks inside the file.

Each yields speech pairs (`kind='speech'`) whose medium is a `MediaRef`; every audio format
goes through `audio_io.load_audio` (libsndfile: flac, opus, mp3, wav). A line that does not
parse is a `malformed_line` rejection naming the file and line.
"""

from __future__ import annotations

import csv
import json
import os
import re
from typing import Iterator

from anygpt_jax import filesystem
from anygpt_jax.tokenizers.inputs import InputRecord, media_part, open_text, rejected, text_part
from anygpt_jax.tokenizers.media import MediaRef

MLS_AUDIO_EXTENSIONS = (".flac", ".opus")


def _pair(record_id: str, ref: MediaRef, text: str) -> InputRecord:
  return InputRecord(record_id, "speech", text=text, source=ref.name, parts=[media_part("speech", ref), text_part(text)])


def read_mls(transcripts: str) -> Iterator[InputRecord]:
  """Multilingual LibriSpeech: one split's `transcripts.txt`, audio under `audio/` beside it."""
  audio_dir = os.path.join(os.path.dirname(transcripts), "audio")
  with open_text(transcripts) as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      utt, tab, text = line.rstrip("\n").partition("\t")
      fields = utt.split("_")
      if not tab or len(fields) != 3:
        yield rejected(f"{os.path.basename(transcripts)}:{line_no}", transcripts, "malformed_line",
                       f"{transcripts}:{line_no}: expected '{{speaker}}_{{book}}_{{segment}}<TAB>text'")
        continue
      stem = os.path.join(audio_dir, fields[0], fields[1], utt)
      path = next((stem + e for e in MLS_AUDIO_EXTENSIONS if filesystem.resolve(stem + e).is_file()),
                  stem + MLS_AUDIO_EXTENSIONS[0])
      yield _pair(utt, MediaRef(path), text.strip())


def read_common_voice(tsv: str) -> Iterator[InputRecord]:
  """Common Voice: one `<split>.tsv`, clips under `clips/` beside it."""
  clips = os.path.join(os.path.dirname(tsv), "clips")
  with open_text(tsv) as f:
    # Sentences hold quotes freely: Common Voice's TSVs are not quoted.
    reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
    missing = {"path", "sentence"} - set(reader.fieldnames or ())
    if missing:
      raise ValueError(f"{tsv}: no column(s) {sorted(missing)}; a Common Voice TSV has 'path' and 'sentence'")
    for line_no, row in enumerate(reader, 2):
      if not row.get("path") or row.get("sentence") is None:
        yield rejected(f"{os.path.basename(tsv)}:{line_no}", tsv, "malformed_line",
                       f"{tsv}:{line_no}: empty 'path' or missing 'sentence'")
        continue
      yield _pair(os.path.splitext(row["path"])[0], MediaRef(os.path.join(clips, row["path"])), row["sentence"].strip())


# GigaSpeech's normalized transcripts spell punctuation as tags; garbage tags mark non-speech.
GIGASPEECH_PUNCTUATION = {"<COMMA>": ",", "<PERIOD>": ".", "<QUESTIONMARK>": "?", "<EXCLAMATIONPOINT>": "!"}
GIGASPEECH_GARBAGE = ("<SIL>", "<MUSIC>", "<NOISE>", "<OTHER>")


def gigaspeech_text(text_tn: str) -> str:
  """`HELLO <COMMA> WORLD <PERIOD>` -> `HELLO, WORLD.`; garbage tags removed."""
  for tag in GIGASPEECH_GARBAGE:
    text_tn = text_tn.replace(tag, " ")
  for tag, mark in GIGASPEECH_PUNCTUATION.items():
    text_tn = text_tn.replace(" " + tag, mark).replace(tag, mark)
  return re.sub(r"\s+", " ", text_tn).strip()


_LAST_METADATA: dict = {}


def _gigaspeech_metadata(path: str) -> dict:
  """The parsed metadata file; the last one is kept, since each of its output shards reads it again."""
  key = (str(filesystem.resolve(path)), os.path.getmtime(path) if filesystem.is_local(path) else None)
  if key not in _LAST_METADATA:
    _LAST_METADATA.clear()
    with open_text(path) as f:
      _LAST_METADATA[key] = json.load(f)
  return _LAST_METADATA[key]


def read_gigaspeech(metadata: str) -> Iterator[InputRecord]:
  """GigaSpeech: every segment of every audio in the metadata JSON, in file order."""
  root = os.path.dirname(metadata)
  meta = _gigaspeech_metadata(metadata)
  if not (isinstance(meta, dict) and isinstance(meta.get("audios"), list)):
    raise ValueError(f"{metadata}: no 'audios' list; not a GigaSpeech metadata file")
  for a, audio in enumerate(meta["audios"]):
    if not (isinstance(audio, dict) and isinstance(audio.get("path"), str) and isinstance(audio.get("segments"), list)):
      yield rejected(f"audios[{a}]", metadata, "malformed_record", f"{metadata}: audios[{a}] lacks 'path' or 'segments'")
      continue
    path = os.path.join(root, audio["path"])
    for s, seg in enumerate(audio["segments"]):
      try:
        sid, begin, end, text = seg["sid"], float(seg["begin_time"]), float(seg["end_time"]), seg["text_tn"]
      except (KeyError, TypeError, ValueError) as e:
        yield rejected(f"{audio.get('aid', a)}/{s}", metadata, "malformed_record",
                       f"{metadata}: audios[{a}].segments[{s}]: {type(e).__name__}: {e}")
        continue
      yield _pair(str(sid), MediaRef(path, start=begin, end=end), gigaspeech_text(str(text)))
