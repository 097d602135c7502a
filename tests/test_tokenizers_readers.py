"""Corpora as distributed -> `anygpt-tokenize --input ...`: webdataset tars, MMC4, AnyInstruct, MLS, Common Voice,
GigaSpeech. Every input here is written in its real layout (tars with `tarfile`, parquet with pyarrow, mp3/flac/opus
made with libsndfile) and tokenized with the tiny random-weight tokenizers."""

import io
import json
import pathlib
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from PIL import Image

from anygpt_jax.data.shards import deserialize_sample, shard_filename
from anygpt_jax.tokenizers import audio_io, image as image_lib, readers
from anygpt_jax.tokenizers.media import MediaError, MediaRef, TarIndex
from anygpt_jax.tokenizers.tfrecord import read_tfrecords
from tools import tokenize_media

torch.set_num_threads(1)


def _model_args(models):
  return ["--speech_model", models["speech"], "--music_model", models["music"], "--image_model", models["image"],
          "--no_progress", "--torch_threads", "1", "--batch_size", "3", "--window", "4"]


def _jpeg(seed, size=(48, 40)) -> bytes:
  rng = np.random.default_rng(seed)
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
  return buf.getvalue()


def _tone(seconds, rate, freq=220.0):
  t = np.arange(int(seconds * rate)) / rate
  return (0.3 * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def _audio_bytes(wave, rate, fmt, subtype) -> bytes:
  buf = io.BytesIO()
  sf.write(buf, wave, rate, format=fmt, subtype=subtype)
  return buf.getvalue()


MP3 = ("MP3", "MPEG_LAYER_III")
OPUS = ("OGG", "OPUS")
FLAC = ("FLAC", "PCM_16")


def _write_tar(path, members: dict[str, bytes]):
  with tarfile.open(path, "w") as tar:
    for name, data in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


def _run(args, models):
  return tokenize_media.main(args + _model_args(models))


def _samples(out, corpus, index=0, count=1):
  return [deserialize_sample(r) for r in read_tfrecords(str(out / shard_filename(corpus, "train", index, count)))]


def _rejects(out, corpus, index=0, count=1):
  path = out / f"{shard_filename(corpus, 'train', index, count)}.rejects.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines()]


def _files(out: pathlib.Path) -> dict[str, bytes]:
  """The finished files of an output directory; nothing may be left in progress in `.tmp/`."""
  assert not list((out / ".tmp").iterdir())
  return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def _stats(out, corpus, index=0, count=1):
  return json.loads((out / f"{shard_filename(corpus, 'train', index, count)}.stats.json").read_text())


# --- webdataset (img2dataset) -----------------------------------------------------------------
def _img2dataset_shard(d: pathlib.Path, name: str, seed: int, with_parquet=True):
  """An img2dataset output shard: `{name}.tar` + `{name}.parquet`, with a few broken samples."""
  keys = [f"{name}{i:04d}" for i in range(5)]
  members = {
      f"{keys[0]}.jpg": _jpeg(seed), f"{keys[0]}.txt": b"a red kite", f"{keys[0]}.json": b'{"caption": "ignored"}',
      f"{keys[1]}.jpg": _jpeg(seed + 1), f"{keys[1]}.json": json.dumps({"caption": "from json"}).encode(),
      f"{keys[2]}.txt": b"image lost", f"{keys[2]}.json": b"{}",  # no image member
      f"{keys[3]}.jpg": b"\xff\xd8 not a jpeg", f"{keys[3]}.txt": b"broken",
  }
  _write_tar(d / f"{name}.tar", members)
  if with_parquet:
    pq.write_table(pa.table({"key": keys + [f"{name}9999"], "caption": ["a"] * 6,
                             "status": ["success", "success", "success", "success", "success", "failed_to_download"]}),
                   d / f"{name}.parquet")
  return keys


def test_webdataset_tars_tokenize_in_place_with_member_rejections(models, tmp_path):
  src = tmp_path / "laion"
  src.mkdir()
  keys = _img2dataset_shard(src, "00000", seed=0)
  out = tmp_path / "out"
  assert _run(["--input", str(src / "*.tar"), "--corpus", "laion2b", "--output_dir", str(out)], models) == 3
  samples = _samples(out, "laion2b")
  assert [s.id for s in samples] == keys[:2]
  assert [(p.kind, p.text) for p in samples[1].parts] == [("image", ""), ("text", "from json")]
  assert samples[0].parts[1].text == "a red kite" and samples[0].source == f"{src}/00000.tar::{keys[0]}.jpg"
  # The codes equal tokenizing the same bytes from a file: the member is read at its offset, not re-encoded.
  (tmp_path / "k0.jpg").write_bytes(_jpeg(0))
  worker = image_lib.SeedImageWorker(models["image"])
  assert samples[0].parts[0].codes == worker.encode_batch([image_lib.load_image(str(tmp_path / "k0.jpg"))])[0].tolist()
  rejects = {r["id"]: r for r in _rejects(out, "laion2b")}
  assert {k: r["reason"] for k, r in rejects.items()} == {
      keys[2]: "missing_member", keys[3]: "undecodable_image", keys[4]: "missing_member"}
  assert "no image member" in rejects[keys[2]]["detail"] and "00000.parquet" in rejects[keys[4]]["detail"]
  assert f"00000.tar::{keys[3]}.jpg" in rejects[keys[3]]["detail"]
  stats = _stats(out, "laion2b")
  assert stats["inputs"] == [f"{src}/00000.tar"] and stats["records_in"] == 5 and stats["records_out"] == 2


def _record_view(r):
  """What a record says, media as their bytes (the indexed reader holds offsets, the stream the bytes)."""
  parts = [(p["kind"], p.get("text"), MediaRef.from_dict(p["media"]).read_bytes() if "media" in p else None)
           for p in r.parts or ()]
  return r.id, r.kind, r.text, r.source, r.reject, r.reject_detail, parts


def test_streaming_a_tar_gives_the_indexed_records(tmp_path):
  """`stream_webdataset` (object stores, Ray's read tasks) and the indexed reader agree on a well-formed tar,
  rejections included; a key split across the tar is a `split_key` rejection of its later fragment."""
  from anygpt_jax.tokenizers.readers import webdataset
  _img2dataset_shard(tmp_path, "00000", seed=0)
  tar = str(tmp_path / "00000.tar")
  with open(tar, "rb") as f:
    streamed = list(webdataset.stream_webdataset(f, tar))
  assert [_record_view(r) for r in streamed] == [_record_view(r) for r in webdataset.read_webdataset(tar)]
  assert len(streamed) == 5 and streamed[2].reject == "missing_member"
  _write_tar(tmp_path / "split.tar", {"a.jpg": _jpeg(1), "b.jpg": _jpeg(2), "b.txt": b"bee", "a.txt": b"late"})
  with open(tmp_path / "split.tar", "rb") as f:
    split = list(webdataset.stream_webdataset(f, str(tmp_path / "split.tar")))
  assert [(r.id, r.reject) for r in split] == [("a", "missing_text"), ("b", ""), ("a", "split_key")]
  assert "['txt']" in split[2].reject_detail


def test_input_shards_are_the_unit_of_work(models, tmp_path):
  src = tmp_path / "coco"
  src.mkdir()
  for i in range(3):
    _img2dataset_shard(src, f"{i:05d}", seed=10 * i, with_parquet=False)
  base = ["--input", str(src), "--format", "webdataset", "--corpus", "laion_coco"]
  whole, split = tmp_path / "whole", tmp_path / "split"
  assert _run(base + ["--output_dir", str(whole)], models) == 3
  for i in (2, 0, 1):  # three machines, each given only its index: no manifest, the same sorted inputs
    assert _run(base + ["--output_dir", str(split), "--shard_index", str(i)], models) == 3
  assert _files(whole) == _files(split)
  for i in range(3):
    assert _stats(split, "laion_coco", i, 3)["inputs"] == [f"{src}/{i:05d}.tar"]  # traceable to its input
    assert [s.id for s in _samples(split, "laion_coco", i, 3)] == [f"{i:05d}0000", f"{i:05d}0001"]
  shard = split / shard_filename("laion_coco", "train", 1, 3)
  mtime = shard.stat().st_mtime_ns
  assert _run(base + ["--output_dir", str(split)], models) == 3  # a rerun skips finished work
  assert shard.stat().st_mtime_ns == mtime


def test_webdataset_audio_clips_with_captions(models, tmp_path):
  members = {"c0.flac": _audio_bytes(_tone(1.0, 32000, 330), 32000, *FLAC), "c0.txt": b"calm piano",
             "c1.mp3": _audio_bytes(_tone(1.5, 32000, 440), 32000, *MP3), "c1.txt": b"upbeat drums"}
  _write_tar(tmp_path / "music-000.tar", members)
  out = tmp_path / "out"
  assert _run(["--input", str(tmp_path / "music-000.tar"), "--media_kind", "music", "--corpus", "music",
               "--output_dir", str(out)], models) == 0
  samples = _samples(out, "music")
  assert [(s.id, s.parts[0].kind, s.parts[1].text) for s in samples] == [("c0", "music", "calm piano"),
                                                                         ("c1", "music", "upbeat drums")]
  assert len(samples[0].parts[0].codes) == 200  # 1 s at 50 frames x 4 codebooks


def test_usage_errors_for_inputs(models, tmp_path):
  out = str(tmp_path / "out")
  assert tokenize_media.main(["--input", str(tmp_path / "none*.tar"), "--corpus", "c", "--output_dir", out]) == 2
  (tmp_path / "x.tar.gz").write_bytes(b"\x1f\x8b\x08\x00rest")
  assert tokenize_media.main(["--input", str(tmp_path / "x.tar.gz"), "--format", "webdataset", "--corpus", "c",
                              "--output_dir", out]) == 2
  (tmp_path / "notes.txt").write_text("hello")
  assert tokenize_media.main(["--input", str(tmp_path / "notes.txt"), "--corpus", "c", "--output_dir", out]) == 2
  _write_tar(tmp_path / "a.tar", {"k.jpg": _jpeg(0), "k.txt": b"x"})
  assert tokenize_media.main(["--input", str(tmp_path / "a.tar"), "--num_shards", "4", "--corpus", "c",
                              "--output_dir", out]) == 2


# --- MMC4 ---------------------------------------------------------------------------------------
def _mmc4_docs():
  return [
      {"url": "u0", "text_list": ["A garden.", "Roses bloom.", "A bench."],
       "image_info": [{"image_name": "a.jpg", "matched_text_index": 0, "matched_sim": 0.3},
                      {"image_name": "b.jpg", "matched_text_index": 2, "matched_sim": 0.2}]},
      {"url": "u1", "text_list": ["One.", "Two."],
       "image_info": [{"image_name": "c.jpg", "matched_text_index": 5, "matched_sim": 0.3},  # past text_list
                      {"image_name": "gone.jpg", "matched_text_index": 0, "matched_sim": 0.3},  # nowhere
                      {"image_name": "bad.jpg", "matched_text_index": 1, "matched_sim": 0.3},  # undecodable
                      {"image_name": "c.jpg", "matched_text_index": 1, "matched_sim": 0.3}]},
      {"url": "u2", "text_list": ["Alone."], "image_info": [{"image_name": "gone.jpg", "matched_text_index": 0}]},
  ]


@pytest.mark.parametrize("images_in, packed", [("tar", "zip"), ("folder", "")])
def test_mmc4_documents_keep_images_in_place_and_drop_bad_ones(models, tmp_path, images_in, packed):
  images = {"a.jpg": _jpeg(1), "b.jpg": _jpeg(2), "c.jpg": _jpeg(3), "bad.jpg": b"garbage"}
  if images_in == "tar":
    location = tmp_path / "images_00000.tar"
    _write_tar(location, {f"images/{k}": v for k, v in images.items()})  # looked up by base name
  else:
    location = tmp_path / "images"
    location.mkdir()
    for k, v in images.items():
      (location / k).write_bytes(v)
  docs = tmp_path / "docs_shard_00000_v2.jsonl"
  docs.write_text("".join(json.dumps(d) + "\n" for d in _mmc4_docs()) + '{"text_list": "oops"}\n')
  if packed:  # as MMC4 ships its document shards: one JSONL per zip
    import zipfile
    with zipfile.ZipFile(tmp_path / "docs_shard_00000_v2.jsonl.zip", "w") as z:
      z.write(docs, docs.name)
    docs.unlink()
    docs = tmp_path / "docs_shard_00000_v2.jsonl.zip"
  out = tmp_path / "out"
  assert _run(["--input", str(docs), "--images", str(location), "--corpus", "mmc4", "--output_dir", str(out)],
              models) == 3
  samples = _samples(out, "mmc4")
  assert [s.id for s in samples] == [f"{docs.name}:1", f"{docs.name}:2"]
  assert [(p.kind, p.text, len(p.codes)) for p in samples[0].parts] == [
      ("image", "", 32), ("text", " A garden.", 0), ("text", " Roses bloom. ", 0), ("image", "", 32),
      ("text", " A bench.", 0)]  # rendered by plain concatenation: "<img> A garden. Roses bloom. <img> A bench."
  # bad.jpg (dropped when it failed to decode) stood between "One. " and c.jpg.
  assert [(p.kind, p.text) for p in samples[1].parts] == [("text", "One. "), ("image", ""), ("text", " Two.")]
  rejects = _rejects(out, "mmc4")
  dropped = [(r["id"], r["reason"], r["dropped_part"]) for r in rejects if "dropped_part" in r]
  assert sorted(dropped) == sorted([(f"{docs.name}:2", "bad_image_index", "image_info[0]"),
                                    (f"{docs.name}:2", "missing_file", "image_info[1]"),
                                    (f"{docs.name}:2", "undecodable_image", "image_info[2]")])
  whole = {r["id"]: r for r in rejects if "dropped_part" not in r}
  assert whole[f"{docs.name}:3"]["reason"] == "no_media_left"
  assert "gone.jpg" in whole[f"{docs.name}:3"]["detail"]
  assert whole[f"{docs.name}:4"]["reason"] == "malformed_record"
  assert next(r for r in rejects if r["reason"] == "bad_image_index")["detail"].count("outside text_list of 2") == 1
  stats = _stats(out, "mmc4")
  assert stats["dropped_media"] == {"bad_image_index": 1, "missing_file": 1, "undecodable_image": 1}
  assert stats["tokens"]["image"] == 3 * 32 and stats["records_out"] == 2


# --- AnyInstruct -------------------------------------------------------------------------------
def test_anyinstruct_conversations_tokenize_every_medium_in_its_turn(models, tmp_path):
  part = tmp_path / "part1"
  part.mkdir()
  _write_tar(part / "images_224.tar", {"images_224/001.jpg": _jpeg(5), "images_224/002.jpg": b"not an image"})
  _write_tar(part / "speech.tar", {"speech/q1.mp3": _audio_bytes(_tone(1.2, 16000), 16000, *MP3),
                                   "speech/a1.mp3": _audio_bytes(_tone(0.8, 16000, 300), 16000, *MP3)})
  (part / "music").mkdir()
  sf.write(part / "music" / "m1.flac", _tone(1.0, 32000, 500), 32000)
  chats = [
      {"id": "c1", "chat": [
          {"role": "user", "message": "<sosp>speech/q1.mp3<eosp> What is in <soim>images_224/001.jpg<eoim> ?"},
          {"role": "assistant", "message": "<-Ins-> A dog.\n<-Res-> <sosp>speech/a1.mp3<eosp>"},
          {"role": "user", "message": "Now music: <somu>music/m1.flac<eomu>"},
          {"role": "assistant", "message": "Calm."}]},
      {"id": "c2", "chat": [{"role": "user", "message": "<soim>images_224/999.jpg<eoim> describe"},
                            {"role": "assistant", "message": "x"}]},
      {"id": "c3", "chat": [{"role": "user", "message": "<soim>images_224/002.jpg<eoim> describe"},
                            {"role": "assistant", "message": "y"}]},
  ]
  (part / "metadata.json").write_text(json.dumps(chats))
  out = tmp_path / "out"
  assert _run(["--input", str(part / "metadata.json"), "--corpus", "anyinstruct", "--output_dir", str(out)],
              models) == 3
  (sample,) = _samples(out, "anyinstruct")
  assert sample.id == "c1"
  assert [(p.kind, p.role, p.text) for p in sample.parts] == [  # text around media verbatim, as AnyGPT keeps it
      ("speech", "user", ""), ("text", "user", " What is in "), ("image", "user", ""), ("text", "user", " ?"),
      ("text", "assistant", "<-Ins-> A dog.\n<-Res-> "), ("speech", "assistant", ""),
      ("text", "user", "Now music: "), ("music", "user", ""), ("text", "assistant", "Calm.")]
  assert [len(p.codes) for p in sample.parts if p.kind != "text"] == [60, 32, 40, 200]
  rejects = {r["id"]: r for r in _rejects(out, "anyinstruct")}
  assert rejects["c2"]["reason"] == "missing_file" and "turn 0" in rejects["c2"]["detail"]
  assert "images_224/999.jpg" in rejects["c2"]["detail"]
  assert rejects["c3"]["reason"] == "undecodable_image" and "002.jpg" in rejects["c3"]["detail"]
  assert not any("dropped_part" in r for r in rejects.values())  # a conversation is rejected whole


# --- speech sets ---------------------------------------------------------------------------------
def test_mls_transcripts_with_flac_and_opus(models, tmp_path):
  split = tmp_path / "mls_english" / "train"
  (split / "audio" / "10" / "20").mkdir(parents=True)
  sf.write(split / "audio" / "10" / "20" / "10_20_000001.flac", _tone(1.0, 16000), 16000)
  (split / "audio" / "10" / "20" / "10_20_000002.opus").write_bytes(_audio_bytes(_tone(0.6, 48000), 48000, *OPUS))
  (split / "transcripts.txt").write_text("10_20_000001\tthe first line\n10_20_000002\tthe second line\n"
                                        "10_20_000003\tno audio here\nbroken line without tab\n")
  out = tmp_path / "out"
  assert _run(["--input", str(split / "transcripts.txt"), "--corpus", "mls", "--output_dir", str(out)], models) == 3
  samples = _samples(out, "mls")
  assert [(s.id, s.parts[1].text, len(s.parts[0].codes)) for s in samples] == [
      ("10_20_000001", "the first line", 50), ("10_20_000002", "the second line", 30)]
  rejects = {r["reason"]: r for r in _rejects(out, "mls")}
  assert set(rejects) == {"missing_file", "malformed_line"}
  assert "10_20_000003.flac" in rejects["missing_file"]["detail"] and "transcripts.txt:4" in rejects["malformed_line"]["detail"]


def test_common_voice_tsv_with_mp3_clips(models, tmp_path):
  lang = tmp_path / "cv-corpus" / "en"
  (lang / "clips").mkdir(parents=True)
  for i, secs in enumerate((0.9, 1.3)):
    (lang / "clips" / f"common_voice_en_{i}.mp3").write_bytes(_audio_bytes(_tone(secs, 16000, 200 + 50 * i), 16000, *MP3))
  (lang / "clips" / "common_voice_en_2.mp3").write_bytes(b"ID3 cut short")
  rows = ["client_id\tpath\tsentence\tup_votes\tdown_votes",
          'a\tcommon_voice_en_0.mp3\tHe said "hello" twice.\t2\t0',
          "b\tcommon_voice_en_1.mp3\tA second sentence.\t3\t0",
          "c\tcommon_voice_en_2.mp3\tA broken clip.\t1\t0"]
  (lang / "train.tsv").write_text("\n".join(rows) + "\n")
  out = tmp_path / "out"
  assert _run(["--input", str(lang / "train.tsv"), "--corpus", "commonvoice", "--output_dir", str(out)], models) == 3
  samples = _samples(out, "commonvoice")
  assert [(s.id, s.parts[1].text) for s in samples] == [("common_voice_en_0", 'He said "hello" twice.'),
                                                        ("common_voice_en_1", "A second sentence.")]
  assert [len(s.parts[0].codes) for s in samples] == [45, 65]
  (reject,) = _rejects(out, "commonvoice")
  assert reject["reason"] == "undecodable_audio" and "common_voice_en_2.mp3" in reject["detail"]


def test_gigaspeech_segments_are_cut_from_long_opus_files(models, tmp_path):
  root = tmp_path / "gigaspeech"
  (root / "audio" / "podcast" / "P0000").mkdir(parents=True)
  long_wave = np.concatenate([_tone(1.5, 48000, 200), _tone(2.0, 48000, 400), _tone(1.5, 48000, 300)])
  opus = root / "audio" / "podcast" / "P0000" / "POD0000000001.opus"
  opus.write_bytes(_audio_bytes(long_wave, 48000, *OPUS))
  meta = {"audios": [{"aid": "POD0000000001", "path": "audio/podcast/P0000/POD0000000001.opus", "duration": 5.0,
                      "segments": [
                          {"sid": "POD0000000001_S0000000", "begin_time": 0.0, "end_time": 1.5,
                           "text_tn": "HELLO <COMMA> WORLD <PERIOD>"},
                          {"sid": "POD0000000001_S0000001", "begin_time": 1.5, "end_time": 3.5,
                           "text_tn": "<SIL> SECOND PART <QUESTIONMARK>"},
                          {"sid": "POD0000000001_S0000002", "begin_time": 4.5, "end_time": 7.25,
                           "text_tn": "PAST THE END"}]}]}
  (root / "GigaSpeech.json").write_text(json.dumps(meta))
  out = tmp_path / "out"
  assert _run(["--input", str(root / "GigaSpeech.json"), "--corpus", "gigaspeech", "--output_dir", str(out)],
              models) == 3
  samples = _samples(out, "gigaspeech")
  assert [(s.id, s.parts[1].text, len(s.parts[0].codes)) for s in samples] == [
      ("POD0000000001_S0000000", "HELLO, WORLD.", 75), ("POD0000000001_S0000001", "SECOND PART?", 100)]
  assert abs(samples[1].duration_s - 2.0) < 1e-3
  (reject,) = _rejects(out, "gigaspeech")
  assert reject["reason"] == "segment_out_of_range" and "lasts 5.000 s" in reject["detail"]
  # The span read by seeking equals the same span of the fully decoded file.
  full = audio_io.load_audio(str(opus), 16000)
  span = audio_io.load_audio(MediaRef(str(opus), start=1.5, end=3.5), 16000)
  assert len(span) == 32000
  np.testing.assert_allclose(span[1000:-1000], full[24000 + 1000:56000 - 1000], atol=2e-3)


# --- one audio layer -----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", [MP3, OPUS, FLAC])
def test_one_audio_layer_reads_files_tar_members_and_spans(tmp_path, fmt):
  rate = 48000 if fmt == OPUS else 16000
  wave = _tone(2.0, rate)
  data = _audio_bytes(wave, rate, *fmt)
  (tmp_path / "a.bin").write_bytes(data)
  _write_tar(tmp_path / "t.tar", {"x/readme.txt": b"hi", "x/a.bin": data})
  from_file = audio_io.load_audio(str(tmp_path / "a.bin"), 16000)
  member = TarIndex(str(tmp_path / "t.tar")).ref("x/a.bin")
  assert member.name == f"{tmp_path}/t.tar::x/a.bin"
  np.testing.assert_array_equal(audio_io.load_audio(member, 16000), from_file)
  assert abs(len(from_file) - 32000) <= 1600  # mp3 encoders pad a few frames
  with pytest.raises(MediaError) as e:
    audio_io.load_audio(MediaRef(str(tmp_path / "a.bin"), start=1.0, end=9.0), 16000)
  assert e.value.reason == "segment_out_of_range"


def test_format_detection(tmp_path):
  cases = {"00000.tar": b"", "transcripts.txt": b"", "train.tsv": b"",
           "GigaSpeech.json": b'{"dataset": "GigaSpeech", "audios": []}',
           "docs.jsonl": b'{"text_list": [], "image_info": []}\n',
           "metadata.json": json.dumps([{"chat": [{"role": "user", "message": "<soim>a.jpg<eoim>"}]}]).encode(),
           "anygpt.jsonl": json.dumps({"text": "t", "speech": "<sosp><🗣️1><eosp>"}).encode() + b"\n",
           "manifest.jsonl": b'{"kind": "image", "path": "a.jpg", "text": "t"}\n'}
  expected = {"00000.tar": "webdataset", "transcripts.txt": "mls", "train.tsv": "commonvoice",
              "GigaSpeech.json": "gigaspeech", "docs.jsonl": "mmc4", "metadata.json": "anyinstruct",
              "anygpt.jsonl": "anygpt", "manifest.jsonl": "manifest"}
  for name, data in cases.items():
    (tmp_path / name).write_bytes(data)
    assert readers.detect_format(str(tmp_path / name)) == expected[name], name


# --- the Ray engine reads the same inputs and writes the same bytes ------------------------------
def _all_formats(root: pathlib.Path) -> dict[str, list[str]]:
  """One small input per reader family: {corpus: extra CLI args}."""
  (root / "wds").mkdir(parents=True)
  for i in range(2):
    _img2dataset_shard(root / "wds", f"{i:05d}", seed=i)
  _write_tar(root / "images.tar", {"a.jpg": _jpeg(1), "b.jpg": _jpeg(2), "c.jpg": _jpeg(3), "bad.jpg": b"x"})
  (root / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in _mmc4_docs()))
  (root / "part1").mkdir()
  _write_tar(root / "part1" / "speech.tar", {"speech/q.mp3": _audio_bytes(_tone(1.0, 16000), 16000, *MP3)})
  _write_tar(root / "part1" / "images_224.tar", {"images_224/1.jpg": _jpeg(7)})
  (root / "part1" / "metadata.json").write_text(json.dumps([
      {"id": "c1", "chat": [{"role": "user", "message": "<sosp>speech/q.mp3<eosp> and <soim>images_224/1.jpg<eoim>"},
                            {"role": "assistant", "message": "ok"}]},
      {"id": "c2", "chat": [{"role": "user", "message": "<sosp>speech/none.mp3<eosp>"}]}]))
  (root / "giga" / "audio").mkdir(parents=True)
  (root / "giga" / "audio" / "p.opus").write_bytes(_audio_bytes(_tone(3.0, 48000), 48000, *OPUS))
  (root / "giga" / "g.json").write_text(json.dumps({"audios": [{"aid": "p", "path": "audio/p.opus", "segments": [
      {"sid": f"p_{k}", "begin_time": b, "end_time": e, "text_tn": "WORDS <PERIOD>"}
      for k, (b, e) in enumerate([(0.0, 1.2), (1.2, 2.9), (2.5, 3.5)])]}]}))
  return {"laion2b": ["--input", str(root / "wds" / "*.tar")],
          "mmc4": ["--input", str(root / "docs.jsonl"), "--images", str(root / "images.tar")],
          "anyinstruct": ["--input", str(root / "part1" / "metadata.json")],
          "gigaspeech": ["--input", str(root / "giga" / "g.json"), "--format", "gigaspeech", "--shards_per_input", "2"]}


@pytest.mark.slow
def test_ray_engine_writes_the_same_bytes_for_every_reader(models, tmp_path):
  import ray
  corpora = _all_formats(tmp_path / "in")
  ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # one Ray instance for every corpus
  try:
    for corpus, args in corpora.items():
      base = args + ["--corpus", corpus]
      local, on_ray = tmp_path / "local" / corpus, tmp_path / "ray" / corpus
      rc_local = _run(base + ["--output_dir", str(local)], models)
      rc_ray = _run(base + ["--output_dir", str(on_ray), "--engine", "ray", "--ray_actors", "2"], models)
      assert rc_local == rc_ray == 3, corpus
      files = _files(local)
      assert files and files == _files(on_ray), corpus
  finally:
    ray.shutdown()


def test_ray_engine_streams_webdataset_tars_through_ray_data(models, tmp_path, monkeypatch):
  """`--engine ray` reads webdataset tars in Ray Data read tasks (the driver never scans one) and writes the local
  engine's bytes: member and parquet rejections, a shard of two windows, a tar with no sample, a compressed tar,
  one and two output shards per input."""
  import ray
  from anygpt_jax.tokenizers.readers import webdataset as webdataset_reader
  src = tmp_path / "wds"
  src.mkdir()
  for i in range(2):
    _img2dataset_shard(src, f"{i:05d}", seed=i)
  _write_tar(src / "00002.tar", {})
  with tarfile.open(src / "00003.tar", "w:gz") as tar:
    tar.add(src / "00000.parquet", arcname="x.json")
  local = {n: tmp_path / f"local{n}" for n in (1, 2)}
  for n in (1, 2):
    assert _run(["--input", str(src / "*.tar"), "--corpus", "laion2b", "--shards_per_input", str(n),
                 "--output_dir", str(local[n])], models) == 3

  def no_scan(path):
    raise AssertionError(f"the driver scanned {path}")

  monkeypatch.setattr(webdataset_reader, "TarIndex", no_scan)  # what the driver would read with; Ray's workers not
  ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
  try:
    for n in (1, 2):
      out = tmp_path / f"ray{n}"
      assert _run(["--input", str(src / "*.tar"), "--corpus", "laion2b", "--shards_per_input", str(n),
                   "--output_dir", str(out), "--engine", "ray", "--ray_actors", "2"], models) == 3
      assert len(_files(local[n])) == 12 * n and _files(out) == _files(local[n]), n
  finally:
    ray.shutdown()
  assert [s.id for s in _samples(local[1], "laion2b", 0, 4)] == ["000000000", "000000001"]
  assert _stats(local[1], "laion2b", 0, 4)["records_in"] == 5  # 4 keys + 1 parquet row: windows of 4 and 1
  assert _stats(local[1], "laion2b", 2, 4)["records_in"] == 0
  assert [r["reason"] for r in _rejects(local[1], "laion2b", 3, 4)] == ["compressed_tar"]


def _content(out: pathlib.Path) -> dict:
  """What an output directory holds apart from paths: per shard the samples' ids, parts and duration, and the
  rejections' ids, reasons and dropped parts."""
  content = {}
  for shard in sorted(p for p in out.iterdir() if p.name.startswith("c-train-") and "." not in p.name):
    samples = [deserialize_sample(r) for r in read_tfrecords(str(shard))]
    rejects = [json.loads(line) for line in shard.with_name(shard.name + ".rejects.jsonl").read_text().splitlines()]
    content[shard.name] = ([(s.id, [(p.kind, p.text, p.codes, p.role) for p in s.parts], s.duration_s) for s in samples],
                           [(r["id"], r["reason"], r.get("dropped_part")) for r in rejects])
  return content


@pytest.mark.slow
def test_gs_inputs_tokenize_like_local_files_with_both_engines(models, gcs, tmp_path):
  """Every reader family given `gs://` inputs (a local GCS emulator): webdataset tars and parquet, MMC4 with its
  images in a tar, AnyInstruct with media tars beside it, GigaSpeech segments cut from an opus file by seeking in
  the bucket. Samples and rejections equal those of the same files read locally; the Ray engine, which streams the
  tars through Ray Data, writes the local engine's bytes."""
  import subprocess
  import sys
  bucket, gcs_env = gcs
  root = tmp_path / "in"
  corpora = _all_formats(root)
  for p in sorted(root.rglob("*")):
    if p.is_file():
      bucket.write(f"in/{p.relative_to(root)}", p.read_bytes())
  url = f"gs://{bucket.name}/in"
  repo = pathlib.Path(__file__).resolve().parents[1]
  env = dict(__import__("os").environ, PYTHONPATH=str(repo), **gcs_env)

  def on_gs(args, out, *extra):
    cmd = [sys.executable, "-m", "tools.tokenize_media", *[a.replace(str(root), url) for a in args], "--corpus", "c",
           "--output_dir", str(out), *extra, *_model_args(models)]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 3, done.stderr[-3000:]

  for corpus, args in corpora.items():
    local, remote = tmp_path / "local" / corpus, tmp_path / "gs" / corpus
    assert _run(args + ["--corpus", "c", "--output_dir", str(local)], models) == 3
    on_gs(args, remote)
    assert _content(local) and _content(remote) == _content(local), corpus
    assert url in _stats(remote, "c", 0, len(_content(remote)))["inputs"][0]
  on_gs(corpora["laion2b"], tmp_path / "gs-ray" / "laion2b", "--engine", "ray", "--ray_num_cpus", "2")
  assert _files(tmp_path / "gs-ray" / "laion2b") == _files(tmp_path / "gs" / "laion2b")
  assert not list(tmp_path.glob("gs:*"))


# --- the README's commands, verbatim ------------------------------------------------------------------
README = pathlib.Path(__file__).resolve().parents[1] / "anygpt_jax" / "tokenizers" / "README.md"


def _readme_commands() -> list[str]:
  text = README.read_text()
  block = text.split("### Corpora as distributed", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
  return [line for line in block.splitlines() if line.startswith("anygpt-tokenize ")]


def _table7_layout(root: pathlib.Path, models: dict):
  """Tiny corpora in their distributed layouts under data/, the tokenizers under models/."""
  (root / "models").mkdir()
  for name, kind in (("seed-tokenizer-2", "image"), ("speechtokenizer", "speech"), ("encodec_32khz", "music")):
    (root / "models" / name).symlink_to(models[kind], target_is_directory=True)
  for i, corpus in enumerate(("laion2b", "laion-coco", "laion-aesthetics-6plus", "journeydb")):
    (root / "data" / corpus).mkdir(parents=True)
    _img2dataset_shard(root / "data" / corpus, "00000", seed=i)
  mmc4 = root / "data" / "mmc4"
  (mmc4 / "images").mkdir(parents=True)
  for k, v in {"a.jpg": _jpeg(1), "b.jpg": _jpeg(2), "c.jpg": _jpeg(3), "bad.jpg": b"x"}.items():
    (mmc4 / "images" / k).write_bytes(v)
  (mmc4 / "docs_shard_0_v2.jsonl").write_text("".join(json.dumps(d) + "\n" for d in _mmc4_docs()))
  mls = root / "data" / "mls_english" / "train"
  (mls / "audio" / "4" / "7").mkdir(parents=True)
  sf.write(mls / "audio" / "4" / "7" / "4_7_000000.flac", _tone(0.8, 16000), 16000)
  (mls / "audio" / "4" / "7" / "4_7_000001.opus").write_bytes(_audio_bytes(_tone(0.7, 48000), 48000, *OPUS))
  (mls / "transcripts.txt").write_text("4_7_000000\tone\n4_7_000001\ttwo\n")
  cv = root / "data" / "cv-corpus" / "en"
  (cv / "clips").mkdir(parents=True)
  (cv / "clips" / "c0.mp3").write_bytes(_audio_bytes(_tone(0.9, 16000), 16000, *MP3))
  (cv / "train.tsv").write_text("client_id\tpath\tsentence\nx\tc0.mp3\tA sentence.\n")
  giga = root / "data" / "gigaspeech"
  (giga / "audio").mkdir(parents=True)
  (giga / "audio" / "p.opus").write_bytes(_audio_bytes(_tone(2.0, 48000), 48000, *OPUS))
  (giga / "GigaSpeech.json").write_text(json.dumps({"audios": [{"aid": "p", "path": "audio/p.opus", "segments": [
      {"sid": "p_0", "begin_time": 0.0, "end_time": 1.0, "text_tn": "HI <PERIOD>"},
      {"sid": "p_1", "begin_time": 1.0, "end_time": 2.0, "text_tn": "BYE <PERIOD>"}]}]}))
  (root / "data" / "music").mkdir()
  _write_tar(root / "data" / "music" / "00000.tar", {"m0.flac": _audio_bytes(_tone(1.0, 32000, 330), 32000, *FLAC),
                                                     "m0.txt": b"a calm piano piece"})
  part = root / "data" / "anyinstruct" / "part1"
  part.mkdir(parents=True)
  _write_tar(part / "speech.tar", {"speech/q.mp3": _audio_bytes(_tone(1.0, 16000), 16000, *MP3)})
  _write_tar(part / "images_224.tar", {"images_224/1.jpg": _jpeg(9)})
  _write_tar(part / "music.tar", {"music/m.flac": _audio_bytes(_tone(1.0, 32000, 440), 32000, *FLAC)})
  (part / "metadata.json").write_text(json.dumps([{"id": 1, "chat": [
      {"role": "user", "message": "<sosp>speech/q.mp3<eosp> Draw it: <soim>images_224/1.jpg<eoim>"},
      {"role": "assistant", "message": "Here is a tune <somu>music/m.flac<eomu>"}]}]))


def test_readme_commands_run_verbatim_for_every_table7_corpus(models, tmp_path, monkeypatch):
  commands = _readme_commands()
  corpora = [c.split("--corpus ")[1].split()[0] for c in commands]
  assert corpora == ["laion_2b", "laion_coco", "laion_aesthetics", "journeydb", "mmc4", "mls", "commonvoice",
                     "gigaspeech", "music", "anyinstruct"]
  section = (README.parents[2] / "README.md").read_text().split("## Tokenizers and the tokenization job")[1]
  shown = [line for line in section.split("\n## ")[0].splitlines() if line.startswith("anygpt-tokenize ")]
  assert shown and set(shown) <= set(commands)  # the top-level README shows lines run here
  _table7_layout(tmp_path, models)
  monkeypatch.chdir(tmp_path)  # the commands use relative paths, as a user types them
  import shlex
  for command, corpus in zip(commands, corpora):
    rc = tokenize_media.main(shlex.split(command)[1:])
    assert rc in (0, 3), command
    stats = [json.loads(p.read_text()) for p in sorted((tmp_path / "shards" / corpus).glob("*.stats.json"))]
    assert stats and sum(s["records_out"] for s in stats) > 0, command
    assert all(s["inputs"][0].startswith("data/") for s in stats), command  # traceable to its input shard


@pytest.mark.parametrize("kind", ["image", "speech"])
def test_webdataset_benchmark_runs(tmp_path, capsys, kind):
  """The throughput benchmark's path (tiny models, a few records): the job and the encoder on the same media."""
  from tools import bench_tokenize
  assert bench_tokenize.main(["--webdataset", kind, "--files", "4", "--model", "tiny", "--batch_size", "2",
                              "--threads", "1", "--repeats", "1", "--workdir", str(tmp_path)]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[-3].startswith("encoder alone") and lines[-2].startswith("job over the tar, prefetch 1")
  assert float(lines[-3].split()[-1]) == 1.0 and float(lines[-1].split()[-2]) > 0
