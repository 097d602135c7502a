"""A small raw demo corpus (images, speech, music + captions) and its manifest, built in seconds.

Real media where installed software provides it: matplotlib's sample photographs and
elevation maps for images, espeak-ng (when `espeak-ng` is on PATH) for speech. Otherwise
speech is synthesised (a glottal pulse train through vowel formants, syllable by syllable).
Music is always synthesised (notes of a scale with harmonics, chords and percussion), with
captions saying what was generated.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess

import numpy as np
import soundfile as sf
from PIL import Image, ImageOps

SPEECH_RATE = 16000
MUSIC_RATE = 32000
_WORDS = ("the quick brown fox jumps over a lazy dog while seven bright stars shine above the quiet harbour "
          "every morning we walk along the river and talk about music images and language models that learn "
          "from many kinds of data").split()
_NOTE_NAMES = ("C", "D", "E", "F", "G", "A", "B")
_SCALES = {"major": (0, 2, 4, 5, 7, 9, 11, 12), "minor": (0, 2, 3, 5, 7, 8, 10, 12)}


def _sample_data_dir() -> pathlib.Path:
  import matplotlib
  return pathlib.Path(matplotlib.get_data_path()) / "sample_data"


def _base_images() -> list[tuple[Image.Image, str]]:
  """Real pictures shipped with matplotlib, each with a caption."""
  from matplotlib import cm
  d = _sample_data_dir()
  out = []
  if (d / "grace_hopper.jpg").exists():
    out.append((Image.open(d / "grace_hopper.jpg").convert("RGB"), "a portrait photograph of Grace Hopper in uniform"))
  if (d / "Minduka_Present_Blue_Pack.png").exists():
    out.append((Image.open(d / "Minduka_Present_Blue_Pack.png").convert("RGB"), "a photograph of a blue gift pack"))
  for name, what in (("jacksboro_fault_dem.npz", "the Jacksboro fault"), ("topobathy.npz", "a coastline")):
    if (d / name).exists():
      with np.load(d / name) as z:
        elev = np.asarray(z[z.files[0]], dtype=np.float64)
      elev = (elev - elev.min()) / max(np.ptp(elev), 1e-9)
      for cmap in ("terrain", "viridis", "gist_earth"):
        rgb = (getattr(cm, cmap)(elev)[..., :3] * 255).astype(np.uint8)
        out.append((Image.fromarray(rgb), f"an elevation map of {what} in {cmap.replace('_', ' ')} colours"))
  if not out:  # no matplotlib sample data: a generated gradient
    x = np.linspace(0, 1, 256)
    rgb = np.stack(np.meshgrid(x, x) + [np.outer(x, x)], -1)
    out.append((Image.fromarray((rgb * 255).astype(np.uint8)), "a colour gradient"))
  return out


def _image_variant(img: Image.Image, caption: str, rng: np.random.Generator) -> tuple[Image.Image, str]:
  """A random crop (and maybe a mirror) of a base picture, with its caption."""
  w, h = img.size
  scale = rng.uniform(0.5, 1.0)
  cw, ch = int(w * scale), int(h * scale)
  x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
  out = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((256, 256), Image.BICUBIC)
  desc = caption if scale > 0.9 else f"a close-up crop of {caption}"
  if rng.random() < 0.5:
    out = ImageOps.mirror(out)
    desc += ", mirrored"
  return out, desc


def _sentence(rng: np.random.Generator) -> str:
  n = int(rng.integers(4, 11))
  return " ".join(rng.choice(_WORDS, n))


def _espeak(text: str, path: pathlib.Path, rng: np.random.Generator) -> bool:
  voice = rng.choice(["en-us", "en", "en-us+f3", "en+m3", "en-us+f2"])
  cmd = ["espeak-ng", "-v", str(voice), "-s", str(int(rng.integers(130, 190))), "-p", str(int(rng.integers(30, 70))),
         "-w", str(path), text]
  return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0 and path.exists()


def _synth_speech(text: str, rng: np.random.Generator) -> np.ndarray:
  """Speech-like audio: one voiced syllable (pulse train through 2 formants) per vowel group."""
  formants = {"a": (730, 1090), "e": (530, 1840), "i": (270, 2290), "o": (570, 840), "u": (300, 870)}
  f0 = rng.uniform(90, 220)
  pieces = []
  for word in text.split():
    for ch in word:
      if ch not in formants:
        continue
      n = int(SPEECH_RATE * rng.uniform(0.08, 0.16))
      t = np.arange(n) / SPEECH_RATE
      pitch = f0 * (1 + 0.1 * np.sin(2 * np.pi * 3 * t))
      phase = 2 * np.pi * np.cumsum(pitch) / SPEECH_RATE
      source = np.sign(np.sin(phase)) * 0.5
      f1, f2 = formants[ch]
      voiced = source * (np.sin(2 * np.pi * f1 * t) + 0.5 * np.sin(2 * np.pi * f2 * t))
      pieces.append(voiced * np.hanning(n))
    pieces.append(0.01 * rng.standard_normal(int(SPEECH_RATE * 0.06)))  # a short pause between words
  wave = np.concatenate(pieces)
  return (0.3 * wave / max(np.abs(wave).max(), 1e-9)).astype(np.float32)


def _synth_music(rng: np.random.Generator, seconds: float) -> tuple[np.ndarray, str]:
  """A melody over a scale with harmonics, optional chords and percussion; returns (wave, caption)."""
  root = int(rng.integers(0, 7))
  mode = str(rng.choice(list(_SCALES)))
  bpm = int(rng.integers(70, 150))
  timbre = str(rng.choice(["soft sine", "bright organ-like", "plucked"]))
  drums = bool(rng.random() < 0.5)
  n = int(seconds * MUSIC_RATE)
  t = np.arange(n) / MUSIC_RATE
  wave = np.zeros(n)
  beat = 60.0 / bpm
  base = 261.63 * 2 ** ([0, 2, 4, 5, 7, 9, 11][root] / 12)
  harmonics = {"soft sine": (1.0,), "bright organ-like": (1.0, 0.5, 0.33, 0.25), "plucked": (1.0, 0.3)}[timbre]
  for k in range(int(seconds / beat)):
    start, length = int(k * beat * MUSIC_RATE), int(beat * MUSIC_RATE)
    seg = t[:min(length, n - start)]
    freq = base * 2 ** (_SCALES[mode][int(rng.integers(0, 8))] / 12)
    env = np.exp(-seg * (6 if timbre == "plucked" else 2))
    wave[start:start + len(seg)] += env * sum(a * np.sin(2 * np.pi * freq * (i + 1) * seg)
                                              for i, a in enumerate(harmonics))
    if drums and k % 2 == 0:
      hit = min(len(seg), 2000)
      wave[start:start + hit] += 0.4 * rng.standard_normal(hit) * np.exp(-np.arange(hit) / 300)
  wave = (0.5 * wave / max(np.abs(wave).max(), 1e-9)).astype(np.float32)
  caption = (f"a {'fast' if bpm > 120 else 'slow' if bpm < 90 else 'moderate'} {timbre} melody in "
             f"{_NOTE_NAMES[root]} {mode} at {bpm} BPM" + (" with percussion" if drums else ""))
  return wave, caption


def build_demo_corpus(out_dir, num_images: int = 64, num_speech: int = 64, num_music: int = 64, seed: int = 0,
                      music_seconds: float = 5.0, use_espeak: bool | None = None) -> pathlib.Path:
  """Writes images (jpg/png), speech and music (wav) with captions and a manifest JSONL.

  Args:
    out_dir: created if needed; media go to out_dir/{images,speech,music}/.
    num_images, num_speech, num_music: items per modality.
    seed: everything is a function of the seed (espeak output aside).
    music_seconds: length of each music clip.
    use_espeak: None uses espeak-ng when it is installed; False always synthesises.

  Returns:
    The path of `manifest.jsonl`, one `{"id", "kind", "path", "text"}` per line, paths
    relative to the manifest.
  """
  out = pathlib.Path(out_dir)
  rng = np.random.default_rng(seed)
  if use_espeak is None:
    use_espeak = shutil.which("espeak-ng") is not None
  rows = []
  (out / "images").mkdir(parents=True, exist_ok=True)
  bases = _base_images()
  for i in range(num_images):
    img, caption = _image_variant(*bases[i % len(bases)], rng)
    name = f"images/img_{i:04d}.{'jpg' if i % 2 == 0 else 'png'}"
    img.save(out / name, quality=90) if name.endswith("jpg") else img.save(out / name)
    rows.append({"id": f"image-{i:04d}", "kind": "image", "path": name, "text": caption})
  (out / "speech").mkdir(parents=True, exist_ok=True)
  for i in range(num_speech):
    text = _sentence(rng)
    name = f"speech/utt_{i:04d}.wav"
    if not (use_espeak and _espeak(text, out / name, rng)):
      sf.write(out / name, _synth_speech(text, rng), SPEECH_RATE)
    rows.append({"id": f"speech-{i:04d}", "kind": "speech", "path": name, "text": text})
  (out / "music").mkdir(parents=True, exist_ok=True)
  for i in range(num_music):
    wave, caption = _synth_music(rng, music_seconds)
    name = f"music/clip_{i:04d}.wav"
    sf.write(out / name, wave, MUSIC_RATE)
    rows.append({"id": f"music-{i:04d}", "kind": "music", "path": name, "text": caption})
  manifest = out / "manifest.jsonl"
  manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return manifest
