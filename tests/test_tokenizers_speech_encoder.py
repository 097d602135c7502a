"""The batch SEANet encoder against the library's: same values per clip, any batch, any length."""

import numpy as np
import pytest
import torch

from anygpt_jax.testing import tiny_tokenizers as tiny
from anygpt_jax.tokenizers.speech import SpeechTokenizerWorker, speechtokenizer_class
from anygpt_jax.tokenizers.speech_encoder import BatchEncoder, ChannelsLastConv, _reflect_pad_time

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
  return SpeechTokenizerWorker(str(tiny.save_tiny_speech_tokenizer(tmp_path_factory.mktemp("st"))))


def _clip(samples, seed):
  return torch.from_numpy((0.1 * np.random.default_rng(seed).standard_normal(samples)).astype(np.float32))


def _library(worker, wave):
  with torch.no_grad():
    return worker.model.encoder(wave[None, None])[0]


@pytest.mark.parametrize("length", [1, 2, 3, 7, 50])
@pytest.mark.parametrize("left,right", [(0, 0), (3, 3), (2, 1), (6, 9)])
def test_reflect_padding_is_the_library_pad1d(length, left, right):
  speechtokenizer_class()  # installs the bare package module the import below needs
  from speechtokenizer.modules.conv import pad1d
  x = torch.randn(2, 5, length)
  ours = _reflect_pad_time(x.transpose(1, 2), left, right).transpose(1, 2)
  torch.testing.assert_close(ours, pad1d(x, (left, right), mode="reflect"), rtol=0, atol=0)


def test_each_clip_matches_the_library_encoder(worker):
  encoder = BatchEncoder(worker.model.encoder)
  waves = [_clip(n, seed) for seed, n in enumerate([320, 333, 5000, 16000, 20811])]
  outs = encoder(waves)
  for wave, out in zip(waves, outs):
    ref = _library(worker, wave)
    assert out.shape == ref.shape == (worker.model.encoder.dimension, -(-len(wave) // worker.hop))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


def test_batch_composition_changes_nothing_beyond_rounding(worker):
  encoder = BatchEncoder(worker.model.encoder)
  target = _clip(12345, 1)
  alone = encoder([target])[0]
  for others in ([_clip(40000, 2)], [_clip(400, 3), _clip(7000, 4), _clip(640, 5)]):
    mixed = encoder(others + [target] + others)[len(others)]
    torch.testing.assert_close(mixed, alone, rtol=1e-4, atol=1e-5 * float(alone.abs().max()))


def test_stride_one_convolutions_over_laid_end_to_end_clips(worker):
  convs = [m for m in BatchEncoder(worker.model.encoder).modules()
           if isinstance(m, ChannelsLastConv) and m.stride == 1 and m.kernel > 1]
  assert convs
  conv = convs[0]
  channels = conv.weight.shape[1]
  clips = [torch.randn(1, n, channels) for n in (1, 2, 9, 40)]
  for joined, alone in zip(conv.forward_many(clips), [conv(c) for c in clips]):
    torch.testing.assert_close(joined, alone, rtol=1e-5, atol=1e-5)


def test_bfloat16_keeps_shapes_and_returns_float32(worker):
  encoder = BatchEncoder(worker.model.encoder, dtype=torch.bfloat16)
  waves = [_clip(3200, 0), _clip(900, 1)]
  outs = encoder(waves)
  assert [o.shape for o in outs] == [_library(worker, w).shape for w in waves]
  assert all(o.dtype == torch.float32 and torch.isfinite(o).all() for o in outs)
