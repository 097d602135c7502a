"""The batch job `anygpt-tokenize`: shards, stats, rejects, exit codes, sharding, resumability, Ray."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from anygpt_jax.data.shards import deserialize_sample, shard_filename
from anygpt_jax.tokenizers import inputs, job
from anygpt_jax.tokenizers.tfrecord import read_tfrecords
from tools import tokenize_media

torch.set_num_threads(1)
REPO = pathlib.Path(__file__).resolve().parents[1]
STATS_KEYS = {"corpus", "split", "records_in", "records_out", "rejected", "tokens", "text_chars", "audio_seconds"}


def _tone(seconds, rate, freq=220.0, channels=1):
  t = np.arange(int(seconds * rate)) / rate
  x = (0.3 * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
  return np.stack([x] * channels, axis=1) if channels > 1 else x


def _photo(seed):
  rng = np.random.default_rng(seed)
  return Image.fromarray(rng.integers(0, 255, size=(40, 50, 3), dtype=np.uint8))


def _good_corpus(d: pathlib.Path, n_each=4) -> list[dict]:
  (d / "m").mkdir(parents=True, exist_ok=True)
  rows = []
  for i in range(n_each):
    sf.write(d / "m" / f"s{i}.wav", _tone(0.6 + 0.37 * i, 22050, 200 + 40 * i), 22050)
    rows.append({"id": f"s{i}", "kind": "speech", "path": f"m/s{i}.wav", "text": f"utterance {i}"})
    sf.write(d / "m" / f"mu{i}.wav", _tone(1.0 + 0.5 * i, 44100, 330 + 20 * i), 44100)
    rows.append({"id": f"mu{i}", "kind": "music", "path": f"m/mu{i}.wav", "text": f"tune {i}"})
    _photo(i).save(d / "m" / f"i{i}.jpg")
    rows.append({"id": f"i{i}", "kind": "image", "path": f"m/i{i}.jpg", "text": f"picture {i}"})
  return rows


def _write_manifest(d: pathlib.Path, rows, extra_lines=()) -> str:
  path = d / "manifest.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(extra_lines))
  return str(path)


def _cfg(out, models, **kw):
  return job.JobConfig(output_dir=str(out), corpus="demo", speech_model=models["speech"],
                       music_model=models["music"], image_model=models["image"], batch_size=3, window=5,
                       workers=2, torch_threads=1, **kw)


def _read_shard(path):
  return [deserialize_sample(r) for r in read_tfrecords(str(path))]


def _model_args(models):
  return ["--speech_model", models["speech"], "--music_model", models["music"], "--image_model", models["image"],
          "--no_progress", "--torch_threads", "1", "--batch_size", "3", "--window", "5"]


def test_shards_hold_pairs_with_local_codes_and_stats(models, tmp_path):
  rows = _good_corpus(tmp_path)
  manifest = _write_manifest(tmp_path, rows)
  anygpt = tmp_path / "anygpt.jsonl"
  anygpt.write_text(json.dumps({"text": "hi", "speech": "<sosp><🗣️5><🗣️6><eosp>"}) + "\n" + json.dumps(
      {"id": "c1", "conversation": [[{"role": "user", "message": "draw <soim><👀9><eoim>"},
                                     {"role": "assistant", "message": "done"}]]}) + "\n")
  out = tmp_path / "out"
  rc = tokenize_media.main(["--manifest", manifest, "--anygpt_data", str(anygpt), "--corpus", "demo",
                            "--output_dir", str(out)] + _model_args(models))
  assert rc == 0
  name = shard_filename("demo", "train", 0, 1)
  samples = _read_shard(out / name)
  assert [s.id for s in samples] == [r["id"] for r in rows] + ["anygpt.jsonl:1", "c1"]  # input order kept
  by_id = {s.id: s for s in samples}
  for r in rows:
    s = by_id[r["id"]]
    assert [p.kind for p in s.parts] == [r["kind"], "text"] and s.parts[1].text == r["text"]
    assert s.source == str((tmp_path / r["path"]).resolve())
    codes = np.asarray(s.parts[0].codes)
    assert codes.min() >= 0 and codes.max() < {"image": 8192, "speech": 1024, "music": 8192}[r["kind"]]
  assert len(by_id["i0"].parts[0].codes) == 32
  assert len(by_id["s0"].parts[0].codes) == 30 and abs(by_id["s0"].duration_s - 0.6) < 1e-3  # 0.6 s at 50 Hz
  assert len(by_id["mu1"].parts[0].codes) == 300  # 1.5 s of music: 75 frames x 4 codebooks
  assert [(p.kind, p.role) for p in by_id["c1"].parts] == [("text", "user"), ("image", "user"),
                                                             ("text", "assistant")]
  stats = json.loads((out / f"{name}.stats.json").read_text())
  assert STATS_KEYS <= set(stats)
  assert (stats["records_in"], stats["records_out"], stats["rejected"]) == (14, 14, {})
  assert stats["tokens"] == {"image": 4 * 32 + 1, "speech": sum(len(by_id[f"s{i}"].parts[0].codes) for i in range(4))
                             + 2, "music": sum(len(by_id[f"mu{i}"].parts[0].codes) for i in range(4))}
  assert stats["text_chars"] == sum(len(r["text"]) for r in rows) + len("hi") + len("draw ") + len("done")
  assert (out / f"{name}.rejects.jsonl").read_text() == ""
  assert sorted(p.name for p in out.iterdir()) == sorted([job.TMP_DIR] + [name + s for s in ("", ".rejects.jsonl",
                                                                                              ".stats.json")])
  assert not list((out / job.TMP_DIR).iterdir())  # nothing left in progress


def _bad_corpus(d: pathlib.Path) -> tuple[list[dict], dict[str, str], list[str]]:
  """Good records mixed with every kind of bad input; returns rows, {id: expected reason}, extra lines."""
  b = d / "bad"
  b.mkdir(parents=True, exist_ok=True)
  rows, expect = [], {}

  def add(rid, kind, name, reason=None, text="caption"):
    rows.append({"id": rid, "kind": kind, "path": f"bad/{name}", "text": text})
    if reason:
      expect[rid] = reason

  sf.write(b / "ok.wav", _tone(1.0, 16000), 16000)
  add("ok_speech", "speech", "ok.wav")
  add("missing", "speech", "nothing_here.wav", "missing_file")
  (b / "junk.wav").write_bytes(os.urandom(3000))
  add("junk", "speech", "junk.wav", "undecodable_audio")
  data = (b / "ok.wav").read_bytes()
  (b / "cut.wav").write_bytes(data[:len(data) // 2])
  add("truncated", "speech", "cut.wav", "truncated_audio")
  sf.write(b / "empty.wav", np.zeros(0, np.float32), 16000)
  add("empty", "speech", "empty.wav", "empty_audio")
  sf.write(b / "silent.wav", np.zeros(16000, np.float32), 16000)
  add("silent", "speech", "silent.wav", "silent_audio")
  sf.write(b / "long.wav", _tone(4.0, 16000), 16000)
  add("too_long", "speech", "long.wav", "too_long")
  sf.write(b / "tiny.wav", _tone(0.01, 16000), 16000)
  add("too_short", "speech", "tiny.wav", "too_short")
  sf.write(b / "three.wav", _tone(1.0, 16000, channels=3), 16000)
  add("three_channels", "speech", "three.wav", "bad_channels")
  sf.write(b / "stereo.wav", _tone(1.0, 32000, channels=2), 32000)
  add("stereo_music", "music", "stereo.wav")
  img = _photo(0)
  img.convert("L").save(b / "gray.png")
  add("gray", "image", "gray.png")
  img.convert("CMYK").save(b / "cmyk.jpg")
  add("cmyk", "image", "cmyk.jpg")
  img.convert("RGBA").save(b / "alpha.png")
  add("alpha", "image", "alpha.png")
  (b / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(100))
  add("broken_png", "image", "broken.png", "undecodable_image")
  photo = (b / "gray.png").read_bytes()
  (b / "cut.png").write_bytes(photo[:len(photo) * 2 // 3])
  add("cut_png", "image", "cut.png", "truncated_image")
  nan = np.full(16000, np.nan, np.float32)
  sf.write(b / "nan.wav", nan, 16000, subtype="FLOAT")
  add("nan", "speech", "nan.wav", "non_finite_audio")
  add("no_text", "image", "gray.png", "missing_text", text="")
  add("tag_in_caption", "image", "gray.png", "special_token_in_text", text="web alt text <soim> of a cat")
  extra = ["{not json\n", json.dumps({"id": "wrong_kind", "kind": "video", "path": "x.mp4"}) + "\n"]
  expect[f"manifest.jsonl:{len(rows) + 1}"] = "malformed_manifest_line"  # ids fall back to file:line
  expect["wrong_kind"] = "malformed_manifest_line"
  return rows, expect, extra


def test_bad_input_is_rejected_with_reasons_and_good_records_survive(models, tmp_path):
  rows, expect, extra = _bad_corpus(tmp_path)
  manifest = _write_manifest(tmp_path, rows, extra)
  anygpt = tmp_path / "anygpt.jsonl"
  anygpt.write_text(json.dumps({"id": "bad_tokens", "text": "t", "image": "<soim><👀8192><eoim>"}) + "\n" +
                    json.dumps({"id": "good_tokens", "text": "t", "image": "<soim><👀8191><eoim>"}) + "\n")
  expect["bad_tokens"] = "bad_token_string"
  out = tmp_path / "out"
  rc = tokenize_media.main(["--manifest", manifest, "--anygpt_data", str(anygpt), "--corpus", "demo",
                            "--output_dir", str(out), "--max_speech_seconds", "3"] + _model_args(models))
  assert rc == tokenize_media.EXIT_REJECTS
  name = shard_filename("demo", "train", 0, 1)
  rejects = [json.loads(l) for l in (out / f"{name}.rejects.jsonl").read_text().splitlines()]
  assert {r["id"]: r["reason"] for r in rejects} == expect
  assert all(r["source"] and r["detail"] for r in rejects)  # category AND detail, for every rejection
  detail = {r["id"]: r["detail"] for r in rejects}
  assert "<👀8192>" in detail["bad_tokens"] and "'image'" in detail["bad_tokens"]  # the token and the field
  assert "junk.wav" in detail["junk"] and "Error" in detail["junk"]  # the file and the decoder's message
  assert "nothing_here.wav" in detail["missing"]
  assert "kind" in detail["wrong_kind"] and "'video'" in detail["wrong_kind"]
  assert "part 1 (text), char 13: '<soim>'" in detail["tag_in_caption"]  # the part, the position, the token
  kept = {s.id for s in _read_shard(out / name)}
  good = {r["id"] for r in rows} - set(expect) | {"good_tokens"}
  assert kept == good  # every good record made it, including converted gray/CMYK/alpha and stereo
  stats = json.loads((out / f"{name}.stats.json").read_text())
  assert stats["records_in"] == len(rows) + len(extra) + 2 and stats["records_out"] == len(good)
  reasons = {}
  for r in expect.values():
    reasons[r] = reasons.get(r, 0) + 1
  assert stats["rejected"] == reasons
  assert set(stats["reject_examples"]) == set(reasons)
  assert any("<👀8192>" in e for e in stats["reject_examples"]["bad_token_string"])


def test_code_strings_have_the_media_limits_and_duplicate_ids_are_counted(tmp_path):
  """A code string longer than the job takes that medium is too_long (the same --max-*-seconds), an
  empty span in a chat is rejected as in a pair, and a repeated id is counted in the stats, or
  rejected with --drop_duplicate_ids."""
  speech = lambda n: "<sosp>" + "<🗣️7>" * n + "<eosp>"  # 50 codes per second
  records = [{"id": "ok", "text": "fine", "speech": speech(100)},
             {"id": "long", "text": "an hour", "speech": speech(3 * 50 + 1)},
             {"id": "empty_chat_span", "conversation": [[{"role": "user", "message": "hi <sosp><eosp>"},
                                                         {"role": "assistant", "message": "ok"}]]},
             {"id": "ok", "text": "the same id again", "speech": speech(5)}]
  data = tmp_path / "data.jsonl"
  data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
  name = shard_filename("demo", "train", 0, 1)
  for flags, kept in (([], 2), (["--drop_duplicate_ids"], 1)):
    out = tmp_path / f"out{len(flags)}"
    rc = tokenize_media.main(["--anygpt_data", str(data), "--corpus", "demo", "--output_dir", str(out),
                              "--max_speech_seconds", "3"] + flags)
    assert rc == tokenize_media.EXIT_REJECTS
    rejects = {r["id"]: r for r in map(json.loads, (out / f"{name}.rejects.jsonl").read_text().splitlines())}
    assert rejects["long"]["reason"] == "too_long"
    assert "151 codes (3.02 s) is over --max_speech_seconds 3" in rejects["long"]["detail"]
    assert rejects["empty_chat_span"]["reason"] == "bad_token_string"
    assert "an empty <sosp><eosp> span" in rejects["empty_chat_span"]["detail"]
    stats = json.loads((out / f"{name}.stats.json").read_text())
    assert stats["records_out"] == kept == len(_read_shard(out / name))
    assert (stats["duplicate_ids"], stats["duplicate_id_examples"]) == ((1, ["ok"]) if not flags else (0, []))
    assert ("ok" in rejects) == bool(flags)
  # Across the shards one run writes: the two "ok" records (records 0 and 3) land in shards 0 and 3 of 4.
  two = tmp_path / "two_shards"
  assert tokenize_media.main(["--anygpt_data", str(data), "--corpus", "demo", "--output_dir", str(two),
                              "--max_speech_seconds", "3", "--num_shards", "4"]) == tokenize_media.EXIT_REJECTS
  counted = [json.loads(p.read_text())["duplicate_ids"] for p in sorted(two.glob("*.stats.json"))]
  assert sum(counted) == 1 and counted[3] == 1  # the later "ok" is record 3: shard 3 of 4


def test_a_rerun_after_the_input_or_settings_changed_refuses_unless_asked_to_rebuild(tmp_path, capsys):
  """Finished shards are skipped only when made from the same inputs and settings: a changed
  input or setting stops the rerun (exit 2) naming it, and --rebuild remakes the shard."""
  data = tmp_path / "pairs.jsonl"
  record = lambda i, text: json.dumps({"id": f"r{i}", "text": text, "speech": "<sosp><🗣️5><🗣️6><eosp>"}) + "\n"
  data.write_text(record(0, "first") + record(1, "second"), encoding="utf-8")
  out = tmp_path / "out"
  shard = out / shard_filename("demo", "train", 0, 1)
  args = ["--anygpt_data", str(data), "--corpus", "demo", "--output_dir", str(out)]
  assert tokenize_media.main(args) == 0
  made = json.loads(pathlib.Path(f"{shard}.stats.json").read_text())["provenance"]
  assert made["inputs"][0]["path"] == str(data) and len(made["inputs"][0]["sha256"]) == 64
  assert tokenize_media.main(args) == 0  # the same inputs: the finished shard is kept as it is

  data.write_text(record(0, "first") + record(1, "second") + record(2, "third, added later"), encoding="utf-8")
  capsys.readouterr()
  assert tokenize_media.main(args) == tokenize_media.EXIT_USAGE
  error = capsys.readouterr().err
  assert f"{shard} was made from other inputs or settings" in error and f"input {data} changed" in error
  assert "--rebuild" in error and len(_read_shard(shard)) == 2  # nothing touched

  assert tokenize_media.main(args + ["--max_speech_seconds", "30"]) == tokenize_media.EXIT_USAGE
  assert "setting max_speech_seconds: 60.0 -> 30.0" in capsys.readouterr().err

  assert tokenize_media.main(args + ["--rebuild"]) == 0
  assert [s.id for s in _read_shard(shard)] == ["r0", "r1", "r2"]
  assert json.loads(pathlib.Path(f"{shard}.stats.json").read_text())["records_out"] == 3
  assert tokenize_media.main(args) == 0  # and now it is current
  fresh = tmp_path / "fresh"
  assert tokenize_media.main(["--anygpt_data", str(data), "--corpus", "demo", "--output_dir", str(fresh)]) == 0
  assert (fresh / shard.name).read_bytes() == shard.read_bytes()  # the rebuild is what a fresh run writes


def test_strict_formats_rejects_conversions(models, tmp_path):
  rows, _, _ = _bad_corpus(tmp_path)
  keep = {"gray", "cmyk", "alpha", "stereo_music", "ok_speech"}
  manifest = _write_manifest(tmp_path, [r for r in rows if r["id"] in keep])
  cfg = _cfg(tmp_path / "out", models, strict_formats=True)
  stats = job.run_local(cfg, lambda: inputs.read_manifest(manifest))[0]
  assert stats["rejected"] == {"bad_image_mode": 3, "bad_channels": 1} and stats["records_out"] == 1


def test_usage_errors_exit_2(models, tmp_path, capsys):
  assert tokenize_media.main(["--corpus", "c", "--output_dir", str(tmp_path)]) == tokenize_media.EXIT_USAGE
  capsys.readouterr()
  assert tokenize_media.main(["--anygpt_data", str(tmp_path), "--corpus", "c",
                              "--output_dir", str(tmp_path / "out")]) == tokenize_media.EXIT_USAGE
  assert f"--anygpt_data {tmp_path} is a directory; it takes a JSONL file" in capsys.readouterr().err
  assert tokenize_media.main(["--manifest", str(tmp_path / "none.jsonl"), "--corpus", "c",
                              "--output_dir", str(tmp_path)]) == tokenize_media.EXIT_USAGE
  manifest = _write_manifest(tmp_path, [])
  assert tokenize_media.main(["--manifest", manifest, "--corpus", "c", "--output_dir", str(tmp_path),
                              "--speech_model", str(tmp_path / "nope")]) == tokenize_media.EXIT_USAGE
  assert tokenize_media.main(["--manifest", manifest, "--corpus", "c", "--output_dir", str(tmp_path),
                              "--num_shards", "2", "--shard_index", "2"]) == tokenize_media.EXIT_USAGE


def test_shards_partition_the_records(models, tmp_path):
  rows = _good_corpus(tmp_path, n_each=3)
  manifest = _write_manifest(tmp_path, rows)
  out = tmp_path / "out"
  for i in (2, 0, 1):  # three "machines", any order
    cfg = _cfg(out, models, num_shards=3, shard_indices=(i,))
    job.run_local(cfg, lambda: inputs.read_manifest(manifest))
  ids = [[s.id for s in _read_shard(out / shard_filename("demo", "train", i, 3))] for i in range(3)]
  assert ids == [[r["id"] for r in rows[i::3]] for i in range(3)]


def _all_bytes(out: pathlib.Path) -> dict[str, bytes]:
  """Every finished file of an output directory (work in progress lives in `.tmp/`, checked empty)."""
  assert not list((out / job.TMP_DIR).iterdir())
  return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def test_rerun_after_a_crash_is_byte_identical_and_skips_done_shards(models, tmp_path):
  rows = _good_corpus(tmp_path, n_each=4)
  manifest = _write_manifest(tmp_path, rows)
  reference = tmp_path / "reference"
  job.run_local(_cfg(reference, models, num_shards=3), lambda: inputs.read_manifest(manifest))

  crashed = tmp_path / "crashed"

  calls = []

  def crashing_records():  # the job re-reads the inputs per shard; die midway through shard 1
    calls.append(1)
    for n, r in enumerate(inputs.read_manifest(manifest)):
      if len(calls) == 2 and n == 7:
        raise KeyboardInterrupt("simulated crash")
      yield r

  with pytest.raises(KeyboardInterrupt):
    job.run_local(_cfg(crashed, models, num_shards=3), crashing_records)
  assert (crashed / shard_filename("demo", "train", 0, 3)).exists()
  assert not (crashed / shard_filename("demo", "train", 1, 3)).exists()
  # The partial shard is in `.tmp/`: a shard glob beside the shards sees only finished shard 0.
  assert sorted(p.name for p in crashed.glob("demo-train-*-of-*")) == sorted(
      shard_filename("demo", "train", 0, 3) + s for s in ("", ".rejects.jsonl", ".stats.json"))
  assert sorted(p.name for p in (crashed / job.TMP_DIR).iterdir()) == sorted(
      shard_filename("demo", "train", 1, 3) + s for s in ("", ".rejects.jsonl"))
  done_mtime = (crashed / shard_filename("demo", "train", 0, 3)).stat().st_mtime_ns

  stats = job.run_local(_cfg(crashed, models, num_shards=3), lambda: inputs.read_manifest(manifest))
  assert _all_bytes(crashed) == _all_bytes(reference)
  assert (crashed / shard_filename("demo", "train", 0, 3)).stat().st_mtime_ns == done_mtime  # skipped
  assert [s["records_in"] for s in stats] == [4, 4, 4]


@pytest.mark.slow
def test_kill_9_then_rerun_is_byte_identical(models, tmp_path):
  rows = _good_corpus(tmp_path, n_each=12)
  manifest = _write_manifest(tmp_path, rows)
  args = ["--manifest", manifest, "--corpus", "demo", "--num_shards", "6", "--workers", "1"] + _model_args(models)
  reference, killed = tmp_path / "reference", tmp_path / "killed"
  assert tokenize_media.main(args + ["--output_dir", str(reference)]) == 0
  cmd = [sys.executable, "-m", "tools.tokenize_media"] + args + ["--output_dir", str(killed)]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  first = killed / shard_filename("demo", "train", 0, 6)
  deadline = time.time() + 120
  while not first.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert first.exists() and not (killed / shard_filename("demo", "train", 5, 6)).exists()
  assert subprocess.run(cmd, cwd=REPO, capture_output=True).returncode == 0
  assert _all_bytes(killed) == _all_bytes(reference)


@pytest.mark.slow
def test_ray_engine_writes_the_same_shards_as_local(models, tmp_path):
  rows = _good_corpus(tmp_path, n_each=4)
  manifest = _write_manifest(tmp_path, rows, ["{broken\n"])
  base = ["--manifest", manifest, "--corpus", "demo", "--num_shards", "2"] + _model_args(models)
  assert tokenize_media.main(base + ["--output_dir", str(tmp_path / "local")]) == 3
  assert tokenize_media.main(base + ["--output_dir", str(tmp_path / "ray"), "--engine", "ray", "--ray_num_cpus", "2",
                                     "--ray_actors", "2"]) == 3
  local, ray_out = _all_bytes(tmp_path / "local"), _all_bytes(tmp_path / "ray")
  assert len(local) == 6 and local == ray_out


def test_folder_input_uses_sidecar_captions(models, tmp_path):
  d = tmp_path / "media"
  (d / "sub").mkdir(parents=True)
  _photo(0).save(d / "b.png")
  (d / "b.txt").write_text("a noisy picture\n")
  sf.write(d / "sub" / "a.wav", _tone(1.0, 16000), 16000)
  (d / "sub" / "a.txt").write_text("a hum")
  (d / "notes.md").write_text("ignored")
  records = list(inputs.read_folder(str(d), audio_kind="music"))
  assert [(r.id, r.kind, r.text) for r in records] == [("b.png", "image", "a noisy picture"),
                                                        ("sub/a.wav", "music", "a hum")]
  out = tmp_path / "out"
  assert tokenize_media.main(["--folder", str(d), "--folder_audio_kind", "music", "--corpus", "demo",
                              "--output_dir", str(out)] + _model_args(models)) == 0
  samples = _read_shard(out / shard_filename("demo", "train", 0, 1))
  assert [(s.id, s.parts[0].kind, len(s.parts[0].codes)) for s in samples] == [("b.png", "image", 32),
                                                                               ("sub/a.wav", "music", 200)]


def test_a_bug_in_our_code_stops_the_job_with_its_traceback(models, tmp_path, monkeypatch, capsys):
  """Fault injection: a TypeError inside our preprocessing is a bug, never a rejected record."""
  rows = [r for r in _good_corpus(tmp_path, n_each=1) if r["kind"] == "image"]
  manifest = _write_manifest(tmp_path, rows)

  def broken(images, size=224):
    raise TypeError("simulated bug in preprocess")

  from anygpt_jax.tokenizers import image as image_lib
  monkeypatch.setattr(image_lib, "preprocess", broken)
  out = tmp_path / "out"
  rc = tokenize_media.main(["--manifest", manifest, "--corpus", "demo", "--output_dir", str(out)] + _model_args(models))
  assert rc == tokenize_media.EXIT_FAILURE
  err = capsys.readouterr().err
  assert "Traceback" in err and "simulated bug in preprocess" in err and "not bad data" in err
  assert not (out / shard_filename("demo", "train", 0, 1)).exists()
  assert not (out / f"{shard_filename('demo', 'train', 0, 1)}.rejects.jsonl").exists()


def test_decoders_let_bugs_through(tmp_path, monkeypatch):
  """image.py and audio_io.py turn decoding errors into rejections and nothing else."""
  from anygpt_jax.tokenizers import audio_io, image as image_lib
  _photo(0).save(tmp_path / "ok.png")
  sf.write(tmp_path / "ok.wav", _tone(0.5, 16000), 16000)

  def bug(*a, **k):
    raise TypeError("simulated bug")

  monkeypatch.setattr(Image.Image, "load", bug)
  with pytest.raises(TypeError):
    image_lib.load_image(str(tmp_path / "ok.png"))
  monkeypatch.undo()
  # A ValueError is a decoding error only while PIL decodes: one from the mode conversion of a
  # decoded image is a bug, not an undecodable image.
  _photo(0).convert("RGBA").save(tmp_path / "alpha.png")

  def conversion_bug(*a, **k):
    raise ValueError("simulated conversion bug")

  monkeypatch.setattr(Image, "alpha_composite", conversion_bug)
  with pytest.raises(ValueError, match="simulated conversion bug") as raised:
    image_lib.load_image(str(tmp_path / "alpha.png"))
  assert type(raised.value) is ValueError  # not a MediaError (a ValueError too): no rejection
  monkeypatch.undo()
  monkeypatch.setattr(sf.SoundFile, "read", bug)
  with pytest.raises(TypeError):
    audio_io.load_audio(str(tmp_path / "ok.wav"), 16000)


def test_prefetching_windows_changes_no_byte(models, tmp_path):
  """Decoding the next windows while encoding this one (bounded prefetch) keeps order and batching."""
  rows = _good_corpus(tmp_path, n_each=4)
  manifest = _write_manifest(tmp_path, rows, ["{broken\n"])
  outs = {}
  for prefetch in (0, 1, 3):
    out = tmp_path / f"p{prefetch}"
    job.run_local(_cfg(out, models, num_shards=2, prefetch=prefetch), lambda: inputs.read_manifest(manifest))
    outs[prefetch] = _all_bytes(out)
  assert len(outs[0]) == 6 and outs[0] == outs[1] == outs[3]


@pytest.mark.slow  # three job processes; the fast suite keeps within its 15 minutes
def test_a_gs_output_dir_gets_the_same_files_and_reruns_skip(gcs, tmp_path):
  """`--output_dir gs://...` (a local GCS emulator): the local run's files, byte for byte, no `.tmp`,
  and a rerun rewrites nothing."""
  anygpt = tmp_path / "anygpt.jsonl"
  anygpt.write_text("".join(json.dumps({"text": f"hi {i}", "speech": f"<sosp><🗣️{i}><🗣️6><eosp>"}) + "\n"
                            for i in range(4)) + json.dumps({"text": "open", "speech": "<sosp><🗣️1>"}) + "\n")
  args = ["--anygpt_data", str(anygpt), "--corpus", "demo", "--num_shards", "2", "--no_progress"]
  assert tokenize_media.main(args + ["--output_dir", str(tmp_path / "local")]) == 3  # one rejected record
  local = {p.name: p.read_bytes() for p in (tmp_path / "local").glob("demo-*")}
  assert len(local) == 6
  bucket, gcs_env = gcs
  cmd = [sys.executable, "-m", "tools.tokenize_media", *args, "--output_dir", f"gs://{bucket.name}/shards/demo"]
  env = dict(os.environ, PYTHONPATH=str(REPO), **gcs_env)
  first = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert first.returncode == 3, first.stderr[-3000:]
  written = {name: item["generation"] for name, item in bucket.objects().items() if name.startswith("shards/")}
  assert sorted(written) == sorted(f"shards/demo/{name}" for name in local)
  for name, data in local.items():
    if not name.endswith(".stats.json"):  # stats hold the input path and nothing else differs
      assert bucket.read(f"shards/demo/{name}") == data, name
  again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert again.returncode == 3, again.stderr[-2000:]
  assert {name: item["generation"] for name, item in bucket.objects().items()
          if name.startswith("shards/")} == written  # finished shards skipped, nothing rewritten
  assert not list(tmp_path.glob("gs:*"))


def test_an_undecodable_line_is_one_rejection_and_the_rest_of_the_file_is_kept(tmp_path):
  """Bad bytes are bad data: a line that is not UTF-8 is rejected with its line number; the records
  before and after it are in the shard."""
  anygpt = tmp_path / "anygpt.jsonl"
  lines = [json.dumps({"text": f"hi {i}", "speech": f"<sosp><🗣️{i}><🗣️6><eosp>"}).encode() for i in range(3)]
  anygpt.write_bytes(lines[0] + b"\n" + b'{"text": "caf\xe9", "speech": "<sosp><\xf0\x9f><eosp>"}\n' + lines[1] + b"\n"
                     + lines[2] + b"\n")
  out = tmp_path / "out"
  assert tokenize_media.main(["--anygpt_data", str(anygpt), "--corpus", "demo", "--output_dir", str(out),
                              "--no_progress"]) == 3  # some records rejected
  stats = json.loads((out / "demo-train-00000-of-00001.stats.json").read_text())
  assert stats["records_out"] == 3
  reject, = [json.loads(l) for l in (out / "demo-train-00000-of-00001.rejects.jsonl").read_text().splitlines()]
  assert reject["id"] == "anygpt.jsonl:2" and "can't decode byte 0xe9" in reject["detail"]
