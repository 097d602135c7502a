"""The benchmarks' metrics, computed by the field's own libraries (no JAX).

- Captioning: CIDEr-D and BLEU-4 as the MS-COCO caption evaluation code computes them
  (`pycocoevalcap`: its PTB tokenizer, which runs Stanford CoreNLP's jar under `java`, then
  `Cider` (CIDEr-D: sigma 6, clipped counts, x10) and `Bleu(4)`), reported x100 as papers do.
- Text-to-image: CLIP score, the cosine of CLIP's projected image and caption embeddings (the
  paper's 0.65 is on this scale, with CLIP ViT-L/14), mean over items; beside it, torchmetrics'
  convention, the mean of 100 x max(cosine, 0), as `CLIP-100`. CLIP loads from a local directory
  in transformers' layout (`openai/clip-vit-large-patch14` as published).
- Music: CLAP score, the cosine of CLAP's projected audio and text embeddings, mean over items
  (the paper's 0.14 for text-to-music). Audio is resampled to CLAP's rate and cut to its window
  (10 s; the start, so a score is reproducible where CLAP's processor would pick a random 10 s).
- Zero-shot TTS: Whisper's transcript of the spoken answer (`transcribe`: greedy, English,
  `generate(language="en", task="transcribe")` for a multilingual checkpoint such as whisper-medium),
  scored by the WER below; speaker similarity (`speaker_similarity`): the cosine of WavLM x-vector
  embeddings (`WavLMForXVector`, e.g. `microsoft/wavlm-base-plus-sv`) of the answer and the prompt.
- ASR: word error rate (`jiwer`) after Whisper's English text normaliser (`whisper_normalizer`'s
  copy of openai-whisper's `EnglishTextNormalizer`, with its spelling table), in percent.
"""

from __future__ import annotations

import functools
import shutil
from typing import Mapping, Sequence


class MetricError(RuntimeError):
  """A metric that cannot be computed here (a missing tool); the message says what to install."""


def caption_scores(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
  """{'CIDEr', 'BLEU-4'} x100 of `predictions` (item id -> caption) against `references` (item id ->
  captions), over the items of `predictions` (corpus-level: CIDEr's document frequencies come from
  these items' references)."""
  if not predictions:
    raise ValueError("no captions to score")
  if shutil.which("java") is None:
    raise MetricError("pycocoevalcap's PTB tokenizer runs Stanford CoreNLP under java, which is not on PATH: "
                      "install a Java runtime (Debian: apt-get install default-jre-headless)")
  from pycocoevalcap.bleu.bleu import Bleu
  from pycocoevalcap.cider.cider import Cider
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

  ids = sorted(predictions)
  tokenizer = PTBTokenizer()
  gts = tokenizer.tokenize({i: [{"caption": c} for c in references[i]] for i in ids})
  res = tokenizer.tokenize({i: [{"caption": predictions[i]}] for i in ids})
  cider, _ = Cider().compute_score(gts, res)
  bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
  return {"CIDEr": 100 * float(cider), "BLEU-4": 100 * float(bleu[3])}


def normalize_english(text: str) -> str:
  """Whisper's English normalisation (lower case, spelled-out numbers as digits, British spellings
  American, punctuation and fillers removed)."""
  return _english_normalizer()(text)


@functools.cache
def _english_normalizer():
  from whisper_normalizer.english import EnglishTextNormalizer
  return EnglishTextNormalizer()


def word_error_rate(hypotheses: Mapping[str, str], references: Mapping[str, str]) -> dict[str, float]:
  """{'WER'} in percent: jiwer's corpus WER (all errors over all reference words) of the normalised
  texts, over the items of `hypotheses`. A reference that normalises to nothing is left out, as it
  has no words to err on."""
  import jiwer

  ids = [i for i in sorted(hypotheses) if normalize_english(references[i]).strip()]
  if not ids:
    raise ValueError("no transcripts with reference words to score")
  return {"WER": 100 * float(jiwer.wer([normalize_english(references[i]) for i in ids],
                                       [normalize_english(hypotheses[i]) for i in ids]))}


def clip_scores(images: Mapping[str, str], captions: Mapping[str, str], clip_model: str,
                batch_size: int = 16) -> dict[str, float]:
  """{'CLIP': mean cosine, 'CLIP-100': mean 100 x max(cosine, 0)} of each item's image file (item id ->
  path) and its caption (item id -> text), over the items of `images`; captions past CLIP's 77
  tokens are cut, as CLIP's processor cuts them."""
  import torch
  from PIL import Image
  from transformers import AutoProcessor, CLIPModel

  if not images:
    raise ValueError("no images to score")
  processor = AutoProcessor.from_pretrained(clip_model)
  model = CLIPModel.from_pretrained(clip_model).eval()
  ids = sorted(images)
  cosines = []
  with torch.no_grad():
    for start in range(0, len(ids), batch_size):
      chunk = ids[start:start + batch_size]
      pictures = [Image.open(images[i]).convert("RGB") for i in chunk]
      inputs = processor(text=[captions[i] for i in chunk], images=pictures, return_tensors="pt", padding=True,
                         truncation=True)
      out = model(**inputs)  # image_embeds, text_embeds: float32 [batch, projection_dim], unit length
      cosines.extend((out.image_embeds * out.text_embeds).sum(-1).tolist())
  return {"CLIP": sum(cosines) / len(cosines), "CLIP-100": sum(100 * max(c, 0.0) for c in cosines) / len(cosines)}


def clap_score(audio: Mapping[str, str], texts: Mapping[str, str], clap_model: str, batch_size: int = 8) -> float:
  """The mean cosine of each item's audio file (item id -> path) and its text (item id -> str) under
  CLAP (a local directory in transformers' layout), over the items of `audio`."""
  import torch
  from transformers import AutoProcessor, ClapModel

  from anygpt_jax.tokenizers import audio_io

  if not audio:
    raise ValueError("no audio to score")
  processor = AutoProcessor.from_pretrained(clap_model)
  model = ClapModel.from_pretrained(clap_model).eval()
  rate = processor.feature_extractor.sampling_rate
  window = int(processor.feature_extractor.max_length_s * rate)
  ids = sorted(audio)
  cosines = []
  with torch.no_grad():
    for start in range(0, len(ids), batch_size):
      chunk = ids[start:start + batch_size]
      waves = [audio_io.load_audio(audio[i], rate)[:window] for i in chunk]
      inputs = processor(text=[texts[i] for i in chunk], audio=waves, sampling_rate=rate, return_tensors="pt",
                         padding=True, truncation=True)
      out = model(**inputs)  # audio_embeds, text_embeds: float32 [batch, projection_dim], unit length
      cosines.extend((out.audio_embeds * out.text_embeds).sum(-1).tolist())
  return sum(cosines) / len(cosines)


def transcribe(audio: Mapping[str, str], whisper_model: str, batch_size: int = 8) -> dict[str, str]:
  """Item id -> Whisper's English transcript of its audio file (resampled to 16 kHz; greedy)."""
  import torch
  from transformers import AutoProcessor, WhisperForConditionalGeneration

  from anygpt_jax.tokenizers import audio_io

  processor = AutoProcessor.from_pretrained(whisper_model)
  model = WhisperForConditionalGeneration.from_pretrained(whisper_model).eval()
  rate = processor.feature_extractor.sampling_rate
  multilingual = getattr(model.generation_config, "is_multilingual", False)
  language = {"language": "en", "task": "transcribe"} if multilingual else {}
  ids = sorted(audio)
  texts = {}
  with torch.no_grad():
    for start in range(0, len(ids), batch_size):
      chunk = ids[start:start + batch_size]
      inputs = processor(audio=[audio_io.load_audio(audio[i], rate) for i in chunk], sampling_rate=rate,
                         return_tensors="pt")
      out = model.generate(inputs["input_features"], do_sample=False, num_beams=1, **language)
      texts.update(zip(chunk, (t.strip() for t in processor.batch_decode(out, skip_special_tokens=True))))
  return texts


def speaker_similarity(pairs: Mapping[str, tuple[str, str]], wavlm_model: str) -> float:
  """The mean cosine of the WavLM x-vector embeddings of each pair of audio files (item id -> (answer,
  prompt)), each file embedded alone at 16 kHz."""
  import torch
  from transformers import AutoFeatureExtractor, WavLMForXVector

  from anygpt_jax.tokenizers import audio_io

  if not pairs:
    raise ValueError("no pairs to compare")
  extractor = AutoFeatureExtractor.from_pretrained(wavlm_model)
  model = WavLMForXVector.from_pretrained(wavlm_model).eval()
  rate = extractor.sampling_rate

  def embed(path: str) -> torch.Tensor:
    inputs = extractor(audio_io.load_audio(path, rate), sampling_rate=rate, return_tensors="pt")
    return model(**inputs).embeddings[0]  # float32 [xvector_output_dim]

  with torch.no_grad():
    cosines = [float(torch.nn.functional.cosine_similarity(embed(a), embed(b), dim=0)) for a, b in pairs.values()]
  return sum(cosines) / len(cosines)
