"""`anygpt-eval` on tiny data sets in their published layouts and a tiny export: the readers, the
metrics against their reference libraries, the README's commands verbatim, bad items, a killed
stage resumed, and two processes."""

import csv
import json
import os
import pathlib
import shlex

import flax.linen as nn
import jax
import jax.numpy as jnp
import jiwer
import numpy as np
import pytest
import soundfile as sf

from anygpt_jax.evaluation import benchmarks, metrics, report
from anygpt_jax.export import save_hf_checkpoint
from anygpt_jax.model import Transformer, get_config
from anygpt_jax.testing import benchmark_data
from anygpt_jax.testing import tiny_evaluators
from anygpt_jax.testing import tiny_tokenizers as tiny
from anygpt_jax.vocabulary import VocabularyLayout
from anygpt_jax.vocabulary.seqio_vocabulary import train_llama_like_sentencepiece
from tools import eval as eval_cli

REPO = pathlib.Path(__file__).resolve().parent.parent
TEXTS = [f"a photo of {w} number {i} on a sunny day, spoken slowly" for i in range(200)
         for w in ("cat", "dog", "violin", "street")]


def readme_commands() -> list[list[str]]:
  """The `anygpt-eval` lines of README's '## Evaluation' section, split as a shell would."""
  section = (REPO / "README.md").read_text().split("## Evaluation", 1)[1].split("\n## ", 1)[0]
  section = section.split("\n### Benchmarks during training", 1)[0]  # test_training_hooks.py runs those
  return [shlex.split(l)[1:] for l in section.splitlines() if l.startswith("anygpt-eval ")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """The README's relative layout: exports/demo, tokenizers/, evaluators/, data/{coco,LibriSpeech,musiccaps,VCTK}."""
  root = tmp_path_factory.mktemp("eval")
  spm = train_llama_like_sentencepiece(TEXTS, str(root / "spm"), vocab_size=300)
  layout = VocabularyLayout(text_vocab_size=300)
  config = get_config("tiny", max_position_embeddings=1024).with_vocabulary(layout)
  params = nn.unbox(Transformer(config).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  save_hf_checkpoint(jax.tree.map(np.asarray, params), config, layout, str(root / "exports" / "demo"), spm_path=spm)
  tiny.save_tiny_seed(root / "tokenizers" / "seed_tokenizer")
  tiny.save_tiny_speech_tokenizer(root / "tokenizers" / "speechtokenizer")
  tiny.save_tiny_unclip(root / "tokenizers" / "stable-diffusion-2-1-unclip")
  tiny_evaluators.save_tiny_clip(root / "evaluators" / "clip-vit-large-patch14")
  benchmark_data.write_coco_karpathy(root / "data" / "coco", num_test=5, missing_image=True)
  benchmark_data.write_coco_captions(root / "data" / "coco")  # annotations/ beside val2014/, as COCO unpacks
  tiny.save_tiny_encodec(root / "tokenizers" / "encodec_32khz")
  tiny_evaluators.save_tiny_clap(root / "evaluators" / "larger_clap_music")
  benchmark_data.write_musiccaps(root / "data" / "musiccaps")
  tiny.save_tiny_soundstorm(root / "tokenizers" / "soundstorm")
  tiny_evaluators.save_tiny_whisper(root / "evaluators" / "whisper-medium")
  tiny_evaluators.save_tiny_wavlm_sv(root / "evaluators" / "wavlm-base-plus-sv")
  benchmark_data.write_vctk(root / "data" / "VCTK")
  benchmark_data.write_librispeech(root / "data" / "LibriSpeech")
  return root


# --- readers ---------------------------------------------------------------------------------
def test_coco_reads_the_karpathy_test_split(tmp_path):
  root = benchmark_data.write_coco_karpathy(tmp_path / "coco", num_test=4)
  items = benchmarks.get("coco_caption").items(str(root))
  assert len(items) == 4  # the train and val entries are skipped
  entries = [e for e in json.loads((root / "dataset_coco.json").read_text())["images"] if e["split"] == "test"]
  assert [i.id for i in items] == [str(e["cocoid"]) for e in entries]
  assert items[0].task == f"image|text|{root / 'val2014' / entries[0]['filename']}"
  assert items[0].references == tuple(s["raw"] for s in entries[0]["sentences"]) and len(items[0].references) == 5
  subset = benchmarks.get("coco_caption").items(str(root), limit=2, seed=3)
  assert subset == benchmarks.get("coco_caption").items(str(root), limit=2, seed=3)
  assert len(subset) == 2 and set(subset) < set(items)
  with pytest.raises(benchmarks.BenchmarkDataError, match="dataset_coco.json"):
    benchmarks.get("coco_caption").items(str(tmp_path))


def test_librispeech_reads_test_clean(tmp_path):
  root = benchmark_data.write_librispeech(tmp_path / "LibriSpeech", utterances_per_chapter=2)
  items = benchmarks.get("librispeech_asr").items(str(root))
  assert [i.id for i in items] == sorted(i.id for i in items) and len(items) == 4
  speaker, chapter, _ = items[0].id.split("-")
  flac = root / "test-clean" / speaker / chapter / f"{items[0].id}.flac"
  assert items[0].task == f"speech|text|{flac}" and flac.exists()
  line = (flac.parent / f"{speaker}-{chapter}.trans.txt").read_text().splitlines()[0]
  assert items[0].references == (line.split(" ", 1)[1],)
  assert benchmarks.get("librispeech_asr").items(str(root / "test-clean")) == items  # test-clean/ itself too
  (flac.parent / f"{speaker}-{chapter}.trans.txt").write_text("1089-134686-0000\n")
  with pytest.raises(benchmarks.BenchmarkDataError, match=r"trans\.txt:1"):
    benchmarks.get("librispeech_asr").items(str(root))


def test_coco_t2i_reads_the_val2014_captions(tmp_path):
  root = benchmark_data.write_coco_captions(tmp_path / "coco", num_images=3)
  items = benchmarks.get("coco_t2i").items(str(root))
  annotations = json.loads((root / "annotations" / "captions_val2014.json").read_text())["annotations"]
  assert [i.id for i in items] == [str(a["id"]) for a in sorted(annotations, key=lambda a: a["id"])]
  assert len(items) == 15 and items[0].task == f"text|image|{annotations[0]['caption']}" and items[0].media is None
  assert items[1].references == ("A sign reading open closed on a door.",)  # a '|' would split the task string
  image = json.loads((root / "annotations" / "captions_val2014.json").read_text())["images"][0]["file_name"]
  assert items[0].reference_media == str(root / "val2014" / image) and os.path.exists(items[0].reference_media)
  assert [i.task for i in benchmarks.get("coco_t2i").items(str(root / "annotations"))] == [i.task for i in items]
  with pytest.raises(benchmarks.BenchmarkDataError, match="captions_val2014.json"):
    benchmarks.get("coco_t2i").items(str(tmp_path))


def test_musiccaps_reads_the_evaluation_rows_and_their_clips(tmp_path):
  root = benchmark_data.write_musiccaps(tmp_path / "musiccaps", num_eval=2)
  text_to_music = benchmarks.get("musiccaps_t2m").items(str(root))
  captioning = benchmarks.get("musiccaps_caption").items(str(root))
  rows = [r for r in csv.DictReader(open(root / "musiccaps-public.csv")) if r["is_audioset_eval"] == "True"]
  assert len(rows) == 3 and [i.id for i in text_to_music] == [i.id for i in captioning] == [r["ytid"] for r in rows]
  assert text_to_music[0].task == f"text|music|{rows[0]['caption']}" and text_to_music[0].media is None
  assert captioning[0].task == f"music|text|{root / 'audio' / rows[0]['ytid']}.wav"
  assert captioning[0].references == (rows[0]["caption"],) and not os.path.exists(captioning[2].media)
  with pytest.raises(benchmarks.BenchmarkDataError, match="musiccaps-public.csv"):
    benchmarks.get("musiccaps_t2m").items(str(tmp_path))


def test_vctk_pairs_a_prompt_and_a_text_per_speaker(tmp_path):
  root = benchmark_data.write_vctk(tmp_path / "VCTK")
  items = benchmarks.get("vctk_tts").items(str(root))
  assert [i.id for i in items] == ["p225", "p226", "p227"]  # p228 has one utterance: no pair
  for item in items:
    _, _, text, prompt = item.task.split("|")
    assert prompt == item.media and prompt.endswith("_mic1.flac") and f"/{item.id}/" in prompt
    spoken = (root / "txt" / item.id / (pathlib.Path(prompt).name[:-len("_mic1.flac")] + ".txt")).read_text().strip()
    assert item.references == (text,) and text != spoken  # the request's text is another utterance's
    recording = pathlib.Path(item.reference_media)  # ... whose own recording the ceiling speaks again
    assert (root / "txt" / item.id / (recording.name[:-len("_mic1.flac")] + ".txt")).read_text().strip() == text
  assert benchmarks.get("vctk_tts").items(str(root), limit=2, seed=1) == [
      i for i in items if i in benchmarks.get("vctk_tts").items(str(root), limit=2, seed=1)]
  with pytest.raises(benchmarks.BenchmarkDataError, match="txt"):
    benchmarks.get("vctk_tts").items(str(tmp_path))


# --- metrics ---------------------------------------------------------------------------------
def test_clip_score_is_the_cosine_of_clips_own_embeddings(tmp_path):
  """metrics.clip_scores against CLIP's towers and projections run directly, one item at a time."""
  import torch
  from PIL import Image
  from transformers import AutoProcessor, CLIPModel

  clip = str(tiny_evaluators.save_tiny_clip(tmp_path / "clip"))
  rng = np.random.default_rng(0)
  captions = {"a": "a dog on the beach", "b": "two cats on a red sofa", "c": "a man rides a bicycle " * 20}
  images = {}
  for i, key in enumerate(captions):
    images[key] = str(tmp_path / f"{key}.jpg")
    Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 56, 3), dtype=np.uint8)).save(images[key])
  ours = metrics.clip_scores(images, captions, clip, batch_size=2)
  model, processor = CLIPModel.from_pretrained(clip).eval(), AutoProcessor.from_pretrained(clip)
  cosines = []
  with torch.no_grad():
    for key in sorted(captions):
      pixels = processor(images=Image.open(images[key]).convert("RGB"), return_tensors="pt")["pixel_values"]
      text = processor(text=[captions[key]], return_tensors="pt", truncation=True)
      image_embedding = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
      text_embedding = model.text_projection(model.text_model(**text).pooler_output)
      cosines.append(float(torch.nn.functional.cosine_similarity(image_embedding, text_embedding)[0]))
  assert ours["CLIP"] == pytest.approx(np.mean(cosines), abs=1e-5)
  assert ours["CLIP-100"] == pytest.approx(np.mean([100 * max(c, 0) for c in cosines]), abs=1e-3)
  assert len(set(np.round(cosines, 4))) == 3



def test_clap_score_is_the_cosine_of_claps_own_embeddings(tmp_path):
  """metrics.clap_score against CLAP's towers and projections run directly, one item at a time, on
  clips at other rates (resampled to CLAP's 48 kHz) and one past CLAP's 10 s window (its start)."""
  import soundfile as sf
  import torch
  from transformers import AutoProcessor, ClapModel

  from anygpt_jax.tokenizers import audio_io

  clap = str(tiny_evaluators.save_tiny_clap(tmp_path / "clap"))
  rng = np.random.default_rng(0)
  texts = {"a": "a calm violin", "b": "loud drums and an electric guitar", "c": "a piano"}
  audio = {}
  for (key, rate, seconds) in (("a", 32000, 3), ("b", 48000, 10), ("c", 44100, 12)):
    audio[key] = str(tmp_path / f"{key}.wav")
    sf.write(audio[key], (0.2 * rng.standard_normal(rate * seconds)).astype(np.float32), rate)
  ours = metrics.clap_score(audio, texts, clap, batch_size=2)
  model, processor = ClapModel.from_pretrained(clap).eval(), AutoProcessor.from_pretrained(clap)
  cosines = []
  with torch.no_grad():
    for key in sorted(texts):
      wave = audio_io.load_audio(audio[key], 48000)[:480000]
      features = processor(audio=[wave], sampling_rate=48000, return_tensors="pt")
      audio_embedding = model.audio_projection(model.audio_model(input_features=features["input_features"],
                                                                 is_longer=features["is_longer"]).pooler_output)
      tokens = processor(text=[texts[key]], return_tensors="pt")
      text_embedding = model.text_projection(model.text_model(**tokens).pooler_output)
      cosines.append(float(torch.nn.functional.cosine_similarity(audio_embedding, text_embedding)[0]))
  assert ours == pytest.approx(np.mean(cosines), abs=1e-5) and len(set(np.round(cosines, 4))) == 3


def test_whisper_transcripts_and_wavlm_similarity_are_the_models_own(tmp_path):
  """metrics.transcribe = greedy decoding written out (Whisper's English transcription prompt, the end
  token suppressed first, up to max_length); speaker_similarity = the cosine of WavLMForXVector's
  embeddings of the raw samples (1 for a clip and itself)."""
  import torch
  from transformers import AutoProcessor, WavLMForXVector, WhisperForConditionalGeneration

  from anygpt_jax.tokenizers import audio_io

  whisper = str(tiny_evaluators.save_tiny_whisper(tmp_path / "whisper"))
  wavlm = str(tiny_evaluators.save_tiny_wavlm_sv(tmp_path / "wavlm"))
  clips = {i.id: i.media for i in benchmarks.get("vctk_tts").items(str(benchmark_data.write_vctk(tmp_path / "v")))}
  ours = metrics.transcribe(clips, whisper, batch_size=2)
  processor = AutoProcessor.from_pretrained(whisper)
  asr = WhisperForConditionalGeneration.from_pretrained(whisper).eval()
  prompt = [processor.tokenizer.convert_tokens_to_ids(t) for t in tiny_evaluators.WHISPER_SPECIAL_TOKENS[1:]
            if t in ("<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>")]
  end = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
  for key, path in clips.items():
    features = processor(audio=[audio_io.load_audio(path, 16000)], sampling_rate=16000,
                         return_tensors="pt")["input_features"]
    ids = list(prompt)
    with torch.no_grad():
      while len(ids) < asr.generation_config.max_length and ids[-1] != end:
        logits = asr(input_features=features, decoder_input_ids=torch.tensor([ids])).logits[0, -1]
        logits[end] = -float("inf") if len(ids) == len(prompt) else logits[end]
        ids.append(int(logits.argmax()))
    assert ours[key] == processor.tokenizer.decode(ids, skip_special_tokens=True).strip()
  model = WavLMForXVector.from_pretrained(wavlm).eval()
  a, b = clips["p225"], clips["p226"]
  with torch.no_grad():
    embed = lambda p: model(input_values=torch.from_numpy(audio_io.load_audio(p, 16000))[None]).embeddings[0]
    direct = float(torch.nn.functional.cosine_similarity(embed(a), embed(b), dim=0))
  assert metrics.speaker_similarity({"x": (a, b)}, wavlm) == pytest.approx(direct, abs=1e-5)
  assert metrics.speaker_similarity({"x": (a, a), "y": (b, b)}, wavlm) == pytest.approx(1.0, abs=1e-5)


def test_caption_scores_are_pycocoevalcaps():
  from pycocoevalcap.bleu.bleu import Bleu
  from pycocoevalcap.cider.cider import Cider
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

  references = {"1": ["A dog runs in the park.", "A brown dog running on grass."],
                "2": ["Two cats sit on a sofa.", "Cats resting on a couch."],
                "3": ["A man rides a red bicycle.", "Someone cycling down the street."]}
  predictions = {"1": "a dog runs on the grass", "2": "two cats on a sofa", "3": "a man on a bicycle"}
  ours = metrics.caption_scores(predictions, references)
  tokenizer = PTBTokenizer()
  gts = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in references.items()})
  res = tokenizer.tokenize({k: [{"caption": v}] for k, v in predictions.items()})
  assert ours["CIDEr"] == pytest.approx(100 * Cider().compute_score(gts, res)[0])
  assert ours["BLEU-4"] == pytest.approx(100 * Bleu(4).compute_score(gts, res, verbose=0)[0][3])
  assert 0 < ours["BLEU-4"] < 100 and ours["CIDEr"] > 0
  perfect = metrics.caption_scores({k: v[0] for k, v in references.items()}, references)
  assert perfect["CIDEr"] > ours["CIDEr"]


def test_word_error_rate_is_jiwers_over_whisper_normalised_text():
  references = {"a": "MISTER SMITH PAID TWENTY FIVE DOLLARS", "b": "THE COLOUR OF THE SEA", "c": "HELLO WORLD"}
  hypotheses = {"a": "Mr. Smith paid $25.", "b": "the color of a sea", "c": ""}
  ours = metrics.word_error_rate(hypotheses, references)
  normalise = metrics.normalize_english
  assert normalise("Mr. Smith paid $25.") == normalise("MISTER SMITH PAID TWENTY FIVE DOLLARS")
  assert normalise("THE COLOUR") == normalise("the color")
  ids = sorted(references)
  assert ours["WER"] == pytest.approx(100 * jiwer.wer([normalise(references[i]) for i in ids],
                                                      [normalise(hypotheses[i]) for i in ids]))
  assert ours["WER"] == pytest.approx(100 * 3 / 11)  # 'a' for 'the' in b, both words of c deleted


# --- the job ---------------------------------------------------------------------------------
def run_readme(workdir, monkeypatch):
  monkeypatch.chdir(workdir)
  for argv in readme_commands():
    assert eval_cli.main(argv) == 0, argv


def test_readme_commands_generate_and_score_every_benchmark(workdir, monkeypatch):
  commands = readme_commands()
  assert [c[0] for c in commands] == ["generate"] * 6 + ["ceiling"] * 3 + ["score"] * 2
  run_readme(workdir, monkeypatch)
  out = workdir / "eval" / "demo"
  entries = {e["benchmark"]: e for e in json.loads((out / "report.json").read_text())["benchmarks"]}
  coco, asr, t2i = entries["coco_caption"], entries["librispeech_asr"], entries["coco_t2i"]
  # Text to image: the scoring stage made each answer's image and scored it with CLIP against its caption.
  assert t2i["items"] == 3 and t2i["scored"] == 3 and t2i["paper"] == {"CLIP": 0.65} and not t2i["failed"]
  images = {p.stem: str(p) for p in (out / "coco_t2i" / "media").glob("*.jpg")}
  t2i_items = {i.id: i for i in benchmarks.get("coco_t2i").items(str(workdir / "data" / "coco"), 3, 0)}
  assert set(images) == set(t2i_items)
  assert t2i["scores"] == pytest.approx(metrics.clip_scores(
      images, {i: t2i_items[i].references[0] for i in images}, str(workdir / "evaluators" / "clip-vit-large-patch14")))
  assert -1 <= t2i["scores"]["CLIP"] <= 1 and 0 <= t2i["scores"]["CLIP-100"] <= 100
  # Music: generated music (Encodec) against its caption, and clips against generated and real captions.
  t2m, captioning = entries["musiccaps_t2m"], entries["musiccaps_caption"]
  clap = str(workdir / "evaluators" / "larger_clap_music")
  music = {p.stem: str(p) for p in (out / "musiccaps_t2m" / "media").glob("*.wav")}
  t2m_items = {i.id: i for i in benchmarks.get("musiccaps_t2m").items(str(workdir / "data" / "musiccaps"), 2, 0)}
  assert t2m["scored"] == 2 and set(music) == set(t2m_items) and t2m["paper"] == {"CLAP": 0.14}
  assert t2m["scores"]["CLAP"] == pytest.approx(metrics.clap_score(
      music, {i: t2m_items[i].references[0] for i in music}, clap))
  assert captioning["items"] == 4 and captioning["scored"] == 3 and len(captioning["failed"]) == 1
  answers = {i: r["text"] for i, r in report.read_generations(str(out), "musiccaps_caption").items() if "text" in r}
  clips = {i.id: i for i in benchmarks.get("musiccaps_caption").items(str(workdir / "data" / "musiccaps"))}
  assert captioning["scores"] == pytest.approx({
      "CLAP": metrics.clap_score({i: clips[i].media for i in answers}, answers, clap),
      "CLAP-reference": metrics.clap_score({i: clips[i].media for i in answers},
                                           {i: clips[i].references[0] for i in answers}, clap)})
  assert coco["items"] == 6 and coco["scored"] == 5  # the missing image is an item that failed
  assert [f["id"] for f in coco["failed"]] == ["999999"] and "COCO_val2014_000000999999.jpg" in coco["failed"][0]["error"]
  assert set(coco["scores"]) == {"CIDEr", "BLEU-4"} and coco["paper"] == {"CIDEr": 107.5}
  assert asr["items"] == 4 and asr["scored"] == 4 and asr["scores"]["WER"] >= 0 and asr["limit"] == 4
  assert coco["settings"]["num_beams"] == 5 and coco["settings"]["max_new_tokens"] == 8  # Table 9 + the flag
  # The scores are the metrics of what was generated, read back independently.
  records = report.read_generations(str(out), "librispeech_asr")
  items = {i.id: i for i in benchmarks.get("librispeech_asr").items(str(workdir / "data" / "LibriSpeech"), 4, 0)}
  assert set(records) == set(items)
  assert asr["scores"]["WER"] == pytest.approx(metrics.word_error_rate(
      {i: r["text"] for i, r in records.items()}, {i: items[i].references[0] for i in records})["WER"])
  table = (out / "report.md").read_text()
  assert "| coco_caption | CIDEr |" in table and "| 107.5 |" in table and "5 of 6" in table
  assert "| librispeech_asr | WER (lower is better) |" in table and "| 8.5 |" in table
  assert "| coco_t2i | CLIP |" in table and "| 0.65 |" in table and "3 of 3" in table
  # The tokenizer ceilings: the items' own media through the tokenizers, scored as answers, beside ours.
  ceilings = {e["benchmark"]: e for e in json.loads((workdir / "eval" / "ceiling" / "report.json").read_text())
              ["benchmarks"]}
  assert set(ceilings) == {"coco_t2i", "musiccaps_t2m", "vctk_tts"}
  for name, entry in ceilings.items():
    assert entry["items"] == entries[name]["items"] and entry["model"].startswith("tokenizer ceiling")
    # Every item is scored but one text-to-music item, whose MusicCaps clip is not on disk.
    assert len(entry["failed"]) == (name == "musiccaps_t2m")
    assert all("missing_file" in f["error"] for f in entry["failed"])
    assert entry["scored"] == entry["items"] - len(entry["failed"])
    assert entries[name]["ceiling"] == entry["scores"] and set(entry["scores"]) == set(entries[name]["scores"])
  from anygpt_jax.generation.media import Media
  records = report.read_generations(str(workdir / "eval" / "ceiling"), "coco_t2i")
  for item_id, item in t2i_items.items():
    codes = Media(image_model=str(workdir / "tokenizers" / "seed_tokenizer")).encode("image", item.reference_media)
    assert records[item_id]["spans"] == [{"modality": "image", "codes": [int(c) for c in codes]}]
  ceiling_rows = [l for l in table.splitlines() if l.startswith("| coco_t2i | CLIP |")]
  assert ceiling_rows[0].split("|")[4].strip() == f"{ceilings['coco_t2i']['scores']['CLIP']:.2f}"
  # Zero-shot TTS: the answer spoken in the prompt's voice, transcribed by Whisper, compared by WavLM.
  tts = entries["vctk_tts"]
  speech = {p.stem: str(p) for p in (out / "vctk_tts" / "media").glob("*.wav")}
  prompts = {p.stem: str(p) for p in (out / "vctk_tts" / "media" / "prompts").glob("*.wav")}
  tts_items = {i.id: i for i in benchmarks.get("vctk_tts").items(str(workdir / "data" / "VCTK"))}
  assert tts["scored"] == 3 and set(speech) == set(prompts) == set(tts_items)
  assert tts["paper"] == {"WER": 8.5, "SIM": 0.77}
  assert all(sf.info(p).duration <= 3.0 for p in prompts.values())
  evaluators = workdir / "evaluators"
  transcripts = metrics.transcribe(speech, str(evaluators / "whisper-medium"))
  assert tts["scores"]["WER"] == pytest.approx(metrics.word_error_rate(
      transcripts, {i: tts_items[i].references[0] for i in speech})["WER"])
  assert tts["scores"]["SIM"] == pytest.approx(metrics.speaker_similarity(
      {i: (speech[i], prompts[i]) for i in speech}, str(evaluators / "wavlm-base-plus-sv")))
  assert "| vctk_tts | WER (lower is better) |" in table and "| vctk_tts | SIM |" in table
  with pytest.raises(SystemExit, match="musiccaps_t2m is scored with --music_model, --clap_model"):
    eval_cli.main(["score", "--output_dir", str(out), "--benchmark", "musiccaps_t2m"])
  with pytest.raises(SystemExit, match="coco_t2i is scored with --image_model, --unclip_model, --clip_model"):
    eval_cli.main(["score", "--output_dir", str(out), "--benchmark", "coco_t2i"])


def test_a_killed_stage_resumed_gives_the_same_report(workdir, monkeypatch, tmp_path):
  """Cut the ASR generations after two items and half a line, rerun: the same file and report."""
  monkeypatch.chdir(workdir)
  argv = readme_commands()[1]
  argv[argv.index("--output_dir") + 1] = str(tmp_path / "whole")
  assert eval_cli.main(argv) == 0
  whole = tmp_path / "whole" / "librispeech_asr" / "generations-00000-of-00001.jsonl"
  lines = whole.read_text().splitlines(keepends=True)
  cut_dir = tmp_path / "cut" / "librispeech_asr"
  cut_dir.mkdir(parents=True)
  (cut_dir / "generations-00000-of-00001.jsonl").write_text("".join(lines[:2]) + lines[2][:25])
  argv[argv.index("--output_dir") + 1] = str(tmp_path / "cut")
  assert eval_cli.main(argv) == 0
  resumed = [json.loads(l) for l in (cut_dir / "generations-00000-of-00001.jsonl").read_text().splitlines()]
  first = [json.loads(l) for l in lines]
  strip = lambda r: {k: v for k, v in r.items() if k not in ("timings", "files")}
  assert sorted(map(json.dumps, map(strip, resumed))) == sorted(map(json.dumps, map(strip, first)))
  scores = [report.score_benchmark(str(tmp_path / d), "librispeech_asr")["scores"] for d in ("whole", "cut")]
  assert scores[0] == scores[1]


def test_two_processes_generate_disjoint_items_whose_union_is_the_set(workdir, monkeypatch, tmp_path):
  monkeypatch.chdir(workdir)
  argv = readme_commands()[0]
  argv[argv.index("--output_dir") + 1] = str(tmp_path)
  for index in (0, 1):
    assert eval_cli.main(argv + ["--num_processes", "2", "--process_index", str(index)]) == 0
  ids = [{json.loads(l)["id"] for l in (tmp_path / "coco_caption" / f"generations-0000{i}-of-00002.jsonl")
          .read_text().splitlines()} for i in (0, 1)]
  assert not ids[0] & ids[1]
  assert ids[0] | ids[1] == {i.id for i in benchmarks.get("coco_caption").items(str(workdir / "data" / "coco"))}
  assert report.score_benchmark(str(tmp_path), "coco_caption")["scored"] == 5


def test_prompts_carry_the_media_as_token_strings_that_render_the_same_prompts(workdir, monkeypatch, tmp_path):
  """`anygpt-eval prompts`: each request with its input medium tokenized; rendered without a
  tokenizer, it gives the ids the medium's file gives through the tokenizer. A missing image keeps
  its error; a text request is kept as it is."""
  from anygpt_jax.evaluation.prompts import PromptsFileError, read_prompts
  from anygpt_jax.generation.media import Media
  from anygpt_jax.generation.requests import Prompts, parse_task
  from anygpt_jax.vocabulary.seqio_vocabulary import AnyGPTVocabulary

  monkeypatch.chdir(workdir)
  runs = (("coco_caption", "coco", ["--image_model=tokenizers/seed_tokenizer"]),  # all 5: the missing image too
          ("librispeech_asr", "LibriSpeech", ["--speech_model=tokenizers/speechtokenizer", "--limit=3"]),
          ("coco_t2i", "coco", ["--limit=3"]))
  for benchmark, data, flags in runs:
    assert eval_cli.main(["prompts", f"--benchmark={benchmark}", f"--data=data/{data}", f"--output_dir={tmp_path}",
                          *flags]) == 0
  coco = read_prompts(str(tmp_path / "coco_caption" / "prompts.json"))
  items = benchmarks.get("coco_caption").items(str(workdir / "data" / "coco"))
  assert coco.data == str(workdir / "data" / "coco") and (coco.limit, coco.seed) == (None, 0)
  assert [i for i, _, _ in coco.items] == [item.id for item in items]
  errors = {i: e for i, _, e in coco.items if e is not None}
  assert list(errors) == [items[-1].id] and "missing" in errors[items[-1].id]  # the one image not on disk
  vocabulary = AnyGPTVocabulary(str(workdir / "exports" / "demo" / "tokenizer.model"))
  media = Media(image_model="tokenizers/seed_tokenizer", speech_model="tokenizers/speechtokenizer")
  asr = read_prompts(str(tmp_path / "librispeech_asr" / "prompts.json"))
  for prompts, data in ((coco, "coco"), (asr, "LibriSpeech")):
    by_id = {item.id: item for item in benchmarks.get(prompts.benchmark).items(str(workdir / "data" / data),
                                                                                prompts.limit, 0)}
    for item_id, task, error in prompts.items:
      if error is None:
        assert task.split("|")[2].startswith(("<soim>", "<sosp>"))
        from_codes = Prompts(vocabulary, None, seed=0).base(parse_task(task))[1]
        assert from_codes == Prompts(vocabulary, media, seed=0).base(parse_task(by_id[item_id].task))[1]
  assert len(asr.items) == 3 and all(e is None for _, _, e in asr.items)
  t2i = read_prompts(str(tmp_path / "coco_t2i" / "prompts.json"))
  assert [t for _, t, _ in t2i.items] == [i.task for i in benchmarks.get("coco_t2i").items(str(workdir / "data" / "coco"), 3, 0)]
  (tmp_path / "bad.json").write_text("{}")
  with pytest.raises(PromptsFileError, match="not a prompts file"):
    read_prompts(str(tmp_path / "bad.json"))


def test_scores_go_to_the_runs_tensorboard_at_its_step(workdir, monkeypatch, tmp_path):
  """From a run directory (anygpt-import of the export): the report names its step, and the scores
  are scalars in its tensorboard/ at that step, as TensorBoard reads them."""
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  from tools import import_weights

  monkeypatch.chdir(workdir)
  run = tmp_path / "run"
  assert import_weights.main(["--source=exports/demo", "--model=tiny", f"--output_dir={run}",
                              "--spm=exports/demo/tokenizer.model", "--override=max_position_embeddings=1024"]) == 0
  argv = readme_commands()[1]
  argv[argv.index("--model") + 1] = str(run)
  argv[argv.index("--output_dir") + 1] = str(tmp_path / "eval")
  argv[argv.index("--limit") + 1] = "2"
  assert eval_cli.main(argv) == 0
  assert eval_cli.main(["score", f"--output_dir={tmp_path / 'eval'}"]) == 0
  entry, = json.loads((tmp_path / "eval" / "report.json").read_text())["benchmarks"]
  assert entry["step"] == 0 and entry["model"] == str(run)
  events = EventAccumulator(str(run / "tensorboard"))
  events.Reload()
  scalar, = events.Scalars("benchmarks/librispeech_asr/WER")
  assert scalar.step == 0 and scalar.value == pytest.approx(entry["scores"]["WER"])
  argv[argv.index("--model") + 1] = "exports/demo"  # an export has no step of its own
  argv[argv.index("--output_dir") + 1] = str(tmp_path / "export_eval")
  argv[argv.index("--limit") + 1] = "1"
  assert eval_cli.main(argv) == 0
  with pytest.raises(SystemExit, match="pass --step"):
    eval_cli.main(["score", f"--output_dir={tmp_path / 'export_eval'}", f"--tensorboard_dir={tmp_path / 'tb'}"])
  assert eval_cli.main(["score", f"--output_dir={tmp_path / 'export_eval'}", f"--tensorboard_dir={tmp_path / 'tb'}",
                        "--step=7"]) == 0
  events = EventAccumulator(str(tmp_path / "tb"))
  events.Reload()
  assert [s.step for s in events.Scalars("benchmarks/librispeech_asr/WER")] == [7]


def test_the_readme_bench_command_runs(capsys):
  """`python -m tools.bench_eval` (README), on a few items: it prints both rows and the scoring rate."""
  from tools import bench_eval
  section = (REPO / "README.md").read_text().split("## Evaluation", 1)[1].split("\n## ", 1)[0]
  assert "python -m tools.bench_eval" in section
  assert bench_eval.main(["--items", "2", "--batch", "2", "--max_new_tokens", "2", "--repeats", "1"]) == 0
  out = capsys.readouterr().out
  assert "| anygpt-eval generate, batch 2 |" in out and "| one item at a time (batch 1) |" in out
  assert "scoring (WER):" in out


def test_the_watch_follows_a_run_until_its_trainer_lets_go(tmp_path):
  """Complete steps without a report are scored in step order; an incomplete one waits; the watch
  polls while `trainer.lock` exists and ends with a last pass once it is gone."""
  from anygpt_jax.evaluation import watch
  from anygpt_jax.training import run_lock

  model_dir = tmp_path / "run"
  (model_dir / "benchmarks" / "step_00000006").mkdir(parents=True)  # being written: no complete.json yet
  watch.mark_complete(model_dir, 4, ["librispeech_asr"])
  watch.mark_complete(model_dir, 2, ["librispeech_asr"])
  (watch.step_directory(model_dir, 2) / "report.json").write_text("{}")  # scored before
  (model_dir / "trainer.lock").write_text("{}")
  scored, polls = [], []

  def score_step(step, directory):
    scored.append(step)
    (tmp_path / "run" / "benchmarks" / f"step_{step:08d}" / "report.json").write_text("{}")
    assert directory == str(watch.step_directory(model_dir, step))

  def sleep(seconds):
    polls.append(seconds)
    if len(polls) == 2:  # the trainer finishes step 6, then stops
      watch.mark_complete(model_dir, 6, ["librispeech_asr"])
      (model_dir / "trainer.lock").unlink()

  training = lambda: run_lock.held(model_dir)
  assert watch.watch(str(model_dir), score_step, training, poll_s=0.5, sleep=sleep) == [4, 6] == scored
  assert polls == [0.5, 0.5]
  assert watch.watch(str(model_dir), score_step, training, sleep=sleep) == []  # nothing left, no trainer: one pass
