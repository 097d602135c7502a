"""`anygpt-generate` end to end: every base task string on the demo's tiny tokenizers, from an
exported directory and from a run directory; bad requests fail alone; the README's commands."""

import json
import os

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from anygpt_jax.testing import generation_setup
from tools import generate


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  return generation_setup.build(tmp_path_factory.mktemp("generate"))


def records(out_dir):
  return [json.loads(l) for l in open(out_dir / "generations.jsonl")]


def test_every_task_string_from_an_export(setup):
  media, out = setup["media"], setup["root"] / "out"
  tasks = [f"text|image|a dog on the beach", f"image|text|{media / 'photo.png'}",
           f"text|speech|hello there|{media / 'voice.wav'}", "text|speech|no voice prompt",
           f"speech|text|{media / 'speech.wav'}", "text|music|a calm violin",
           f"music|text|{media / 'music.wav'}",
           "text|video|a cat", f"image|text|{media / 'missing.png'}", f"speech|text|{media / 'photo.png'}"]
  assert generate.main([f"--model={setup['export']}", f"--output_dir={out}", *setup["flags"], *tasks]) == 1
  got = records(out)
  assert [r["index"] for r in got] == list(range(len(tasks)))
  ok, bad = got[:7], got[7:]
  for r in ok:
    assert "error" not in r, r
    assert r["prompt_ids"][0] == 1 and r["output_ids"] and set(r["timings"]) >= {"prefill_s", "decode_s"}
  image = ok[0]["files"][0]
  assert image["codes"] == 32 and Image.open(image["file"]).size == (image["width"], image["height"])
  for r in ok[2:4]:
    info = sf.info(r["files"][0]["file"])
    assert info.samplerate == 16000 and info.frames == r["files"][0]["codes"] * 320
  music = ok[5]["files"][0]
  info = sf.info(music["file"])
  assert info.samplerate == 32000 and music["codes"] % 4 == 0 and info.frames == music["codes"] // 4 * 640
  for r in (ok[1], ok[4], ok[6]):
    assert r["files"][0]["file"].endswith(".txt") and "[MMGPT]:" in r["prompt"]
    assert r["prompt"].endswith("[MMGPT]:")
    assert not any(t in r["text"] for t in ("[Human]", "[MMGPT]", "<eoh>", "<eos>", "<soim>", "<sosp>", "<somu>"))
  assert "unknown direction text|video" in bad[0]["error"]
  assert "missing_file" in bad[1]["error"] and "missing.png" in bad[1]["error"]
  assert "speech input" in bad[2]["error"]


def test_a_run_directory_generates_what_its_export_generates(setup, tmp_path):
  """The run-directory load path: `anygpt-import` of the export, then the same requests from both."""
  from tools import import_weights
  run = tmp_path / "run"
  assert import_weights.main([f"--source={setup['export']}", "--model=tiny", f"--output_dir={run}",
                              f"--spm={os.path.join(setup['export'], 'tokenizer.model')}",
                              "--override=max_position_embeddings=1024"]) == 0
  tasks = ["text|music|a calm violin", "text|image|a red car"]
  outputs = {}
  for name, model in (("export", setup["export"]), ("run", str(run))):
    out = tmp_path / name
    assert generate.main([f"--model={model}", f"--output_dir={out}", *setup["flags"], *tasks]) == 0
    outputs[name] = [(r["prompt_ids"], r["output_ids"]) for r in records(out)]
  assert outputs["run"] == outputs["export"]
  assert all(len(o) > 1 for _, o in outputs["run"])


def test_answer_text_is_the_text_up_to_the_first_stop_without_role_or_modality_tokens(setup):
  """As AnyGPT's CLI reads an answer: special tokens skipped, the text up to <eos>."""
  from anygpt_jax.generation.requests import answer_text
  from anygpt_jax.vocabulary.seqio_vocabulary import EOS_ID, AnyGPTVocabulary
  vocabulary = AnyGPTVocabulary(os.path.join(setup["export"], "tokenizer.model"))
  layout = vocabulary.layout
  first, second, after = (vocabulary.encode(t) for t in ("a photo of", "a cat", "never read"))
  image = layout.code_to_id("image", [3, 4])
  tokens = [layout.mmgpt_id, *first, layout.role_id("<eoh>"), layout.modality("image").start_id, *image,
            layout.modality("image").end_id, *second, layout.eos_id, *after, EOS_ID]
  assert "[MMGPT]" in vocabulary.decode(tokens) and "<eoh>" in vocabulary.decode(tokens)
  assert answer_text(vocabulary, tokens, (EOS_ID, layout.eos_id)) == vocabulary.decode(first + second).strip()
  assert answer_text(vocabulary, [layout.role_id("<eoh>")] * 5 + [EOS_ID], (EOS_ID, layout.eos_id)) == ""


def test_unclosable_span_and_chat_from_a_file(setup, tmp_path):
  chat = tmp_path / "chat.jsonl"
  chat.write_text(json.dumps({"messages": [{"role": "user", "content": [
      {"text": "What is in this picture?"}, {"image": str(setup["media"] / "photo.png")}]}]}) + "\n")
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("# one request per line\ntext|image|a red car\n")
  out = tmp_path / "out"
  code = generate.main([f"--model={setup['export']}", f"--output_dir={out}", f"--prompts_file={prompts}",
                        f"--chat_file={chat}", *setup["flags"], "--set=image.max_new_tokens=20"])
  got = records(out)
  assert code == 1 and "cannot hold a image span" in got[0]["error"]
  # The chat renderer's own format (anygpt_jax.data.rendering.chat_string), up to the reply.
  assert "error" not in got[1] and "[Human]: What is in this picture?" in got[1]["prompt"]
  assert got[1]["prompt"].count("\U0001F440") == 32 and got[1]["prompt"].endswith("[MMGPT]:")
  assert open(got[1]["files"][0]["file"]).read().strip() == got[1]["text"].replace("<eos>", "").strip()


def readme_commands(program: str) -> list[str]:
  """The lines of README's '## Generation' section that start with `program`."""
  import pathlib
  text = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
  section = text.split("## Generation", 1)[1].split("\n## ", 1)[0]
  return [l.strip() for l in section.splitlines() if l.strip().startswith(program)]


@pytest.mark.slow
def test_readme_generate_command(setup, tmp_path, monkeypatch):
  """The README's command, verbatim, from a directory laid out as it assumes (relative paths)."""
  import shlex
  import shutil
  demo = tmp_path / "demo_out"  # laid out as `make demo` writes it
  demo.mkdir()
  (demo / "export").symlink_to(setup["export"])
  (demo / "tokenizer_models").symlink_to(setup["root"] / "tokenizers")
  for folder in ("images", "speech", "music"):
    (demo / "raw" / folder).mkdir(parents=True)
  Image.open(setup["media"] / "photo.png").convert("RGB").save(demo / "raw" / "images" / "img_0000.jpg")
  shutil.copy(setup["media"] / "speech.wav", demo / "raw" / "speech" / "utt_0000.wav")
  shutil.copy(setup["media"] / "music.wav", demo / "raw" / "music" / "clip_0000.wav")
  monkeypatch.chdir(tmp_path)
  commands = readme_commands("anygpt-generate")
  assert len(commands) == 1
  assert generate.main(shlex.split(commands[0])[1:]) == 0
  got = records(demo / "readme_samples")
  assert len(got) == 6 and not any("error" in r for r in got)
  assert [pathlib_suffix(r["files"][0]["file"]) for r in got] == [".jpg", ".txt", ".wav", ".txt", ".wav", ".txt"]


def pathlib_suffix(path):
  import pathlib
  return pathlib.Path(path).suffix


def test_readme_bench_command_runs(capsys):
  from tools import bench_generate
  commands = readme_commands("`python -m tools.bench_generate`")
  assert commands, "the README names the benchmark command"
  assert bench_generate.main(["--config", "tiny", "--text_vocab_size", "300", "--batch", "1", "--batch", "2",
                              "--prompt_len", "8", "--new_tokens", "4", "--repeats", "1"]) == 0
  rows = [l for l in capsys.readouterr().out.splitlines() if l.strip().split("|")[0].strip() in ("1", "2")]
  assert len(rows) == 2 and all(len(r.split("|")[2].split()) == 3 for r in rows)
  assert all(float(x) > 0 for r in rows for part in r.split("|")[1:] for x in part.split())


def test_the_bench_refuses_a_rate_from_a_clock_that_did_not_advance():
  """A decode timed as a difference of two calls once went negative and printed 6.3e10 tok/s."""
  from tools.bench_generate import rate
  assert rate(64, 2.0, "decode") == 32.0
  for seconds in (0.0, -0.3, float("nan")):
    with pytest.raises(RuntimeError, match="refusing to print a rate"):
      rate(64, seconds, "transformers decode")


def test_music_inputs_are_read_as_long_as_anygpt_reads_them(models, tmp_path):
  """AnyGPT's base-model CLI encodes 20 s of a music input, its chat CLI 5 s; --music_seconds sets it."""
  import soundfile as sf
  from anygpt_jax.generation.media import Media
  song = tmp_path / "song.wav"
  t = np.arange(32000 * 25) / 32000
  sf.write(song, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 32000)
  media = Media(music_model=models["music"])
  per_second = 50 * media.music_codebooks  # 50 Encodec frames a second, 4 codebooks each
  assert len(media.encode("music", str(song))) == 20 * per_second
  assert len(media.encode("music", str(song), chat=True)) == 5 * per_second
  assert len(Media(music_model=models["music"], music_seconds=3.0).encode("music", str(song))) == 3 * per_second
