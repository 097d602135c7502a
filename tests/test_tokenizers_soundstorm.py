"""SoundStorm: AnyGPT's checkpoint layout, the key-padding mask, AnyGPT's generate procedure."""

import pytest
import torch

from anygpt_jax.testing import tiny_tokenizers as tiny
from anygpt_jax.tokenizers.soundstorm import (SoundStorm, is_anygpt_layout, state_dict_to_anygpt,
                                              state_dict_to_ours)


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
  path = tiny.save_tiny_soundstorm(tmp_path_factory.mktemp("soundstorm"))
  return path, SoundStorm.from_checkpoint(path)


def random_inputs(model, b=2, n=9, seed=0):
  g = torch.Generator().manual_seed(seed)
  codes = torch.randint(0, model.mask_id + 1, (b, n, model.cfg.num_quantizers), generator=g)
  cond = model.semantic_token_emb(torch.randint(0, 1024, (b, n), generator=g))
  return codes, cond


def test_loads_anygpt_layout_with_equal_logits(ours, tmp_path):
  path, model = ours
  theirs = state_dict_to_anygpt(torch.load(path, weights_only=True))
  assert "net.conformer.layers.0.conv.net1.0.weight" in theirs
  assert "net.conformer.layers.1.conv.ds_conv.conv.weight" in theirs
  assert "net.conformer.layers.0.conv.net2.2.bias" in theirs and "net.conformer.layers.0.conv.net2.1.gamma" in theirs
  assert not any(".conv.net." in k for k in theirs)
  assert theirs["net.to_logits.2.bias"].shape == (1, 1, 7, 1024)
  assert is_anygpt_layout(theirs) and not is_anygpt_layout(torch.load(path, weights_only=True))
  torch.save(theirs, tmp_path / "anygpt.pt")
  loaded = SoundStorm.from_checkpoint(tmp_path / "anygpt.pt")
  codes, cond = random_inputs(model)
  with torch.no_grad():
    assert torch.equal(loaded.net(codes, cond), model.net(codes, cond))
  assert state_dict_to_ours(theirs).keys() == torch.load(path, weights_only=True).keys()
  with pytest.raises(ValueError, match="cannot tell its layout"):
    state_dict_to_ours({"semantic_token_emb.weight": torch.zeros(3, 2)})


def test_key_padding_mask_makes_batches_exact(ours):
  _, model = ours
  codes, cond = random_inputs(model, b=2, n=12, seed=1)
  short = 7
  mask = torch.ones(2, 12, dtype=torch.bool)
  mask[0, short:] = False
  with torch.no_grad():
    batched = model.net(codes, cond, mask=mask)
    alone = model.net(codes[:1, :short], cond[:1, :short])
    unmasked = model.net(codes, cond)
  assert torch.allclose(batched[0, :short], alone[0], atol=1e-5)
  assert not torch.allclose(unmasked[0, :short], alone[0], atol=1e-5)  # padding leaks without the mask
  assert torch.allclose(batched[1], unmasked[1], atol=1e-5)


def test_generate_defaults_and_determinism(ours):
  _, model = ours
  g = torch.Generator().manual_seed(0)
  semantic = torch.randint(0, 1024, (2, 10), generator=g)
  prompt = torch.randint(0, 1024, (2, 6, 8), generator=g)
  out = model.generate(semantic, prompt_codes=prompt, temperature=0.0)
  assert out.shape == (2, 10, 8) and torch.equal(out[:, :, 0], semantic)
  assert int(out.max()) < 1024 and int(out.min()) >= 0
  assert torch.equal(out, model.generate(semantic, prompt_codes=prompt, temperature=0.0))
  sampled = [model.generate(semantic, prompt_codes=prompt, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
  assert not torch.equal(sampled[0], sampled[1])


def test_the_temperature_0_first_pass_draws_its_noise_as_anygpt_does(ours):
  """AnyGPT's gumbel_sample draws Gumbel noise even at temperature 0 (level 1's first pass): with
  steps=1 (one such pass, then greedy ones) a generator moves by exactly one draw of the logits'
  shape, so the same seed gives AnyGPT's noise on the sampled passes that follow."""
  _, model = ours
  semantic = torch.randint(0, 1024, (1, 5), generator=torch.Generator().manual_seed(3))
  used = torch.Generator().manual_seed(7)
  model.generate(semantic, steps=1, generator=used)
  expected = torch.Generator().manual_seed(7)
  torch.rand((1, 5 * model.cfg.num_quantizers, 1024), generator=expected)  # (b, frames x levels, vocab)
  assert torch.equal(torch.rand(4, generator=used), torch.rand(4, generator=expected))


# AnyGPT's own soundstorm_speechtokenizer code (its SoundStorm.generate with greedy=True, Gumbel
# sampling at temperature 0) on the tiny checkpoint below, converted to its layout, in a scratch
# environment (beartype 0.16.4): acoustic codes of the inputs of test_generate_equals_anygpt_procedure.
# Steps 1, 3 and 4, with and without the voice prompt, all matched there; steps=3 is pinned.
ANYGPT_GOLDEN_STEPS3_PROMPT = [[[712, 729, 494, 666, 613, 781, 532], [265, 220, 811, 324, 514, 436, 399], [93, 802, 918, 1018, 702, 993, 502], [93, 802, 387, 77, 595, 343, 502], [270, 38, 918, 123, 223, 505, 269], [976, 741, 307, 225, 593, 208, 866], [270, 400, 151, 370, 20, 321, 495], [270, 537, 105, 53, 73, 450, 796], [712, 278, 918, 849, 103, 707, 515], [270, 389, 889, 296, 224, 505, 698]], [[270, 514, 151, 397, 702, 132, 322], [712, 336, 172, 775, 950, 321, 742], [265, 676, 268, 915, 595, 610, 369], [270, 464, 13, 462, 13, 796, 185], [270, 514, 151, 852, 170, 38, 643], [270, 957, 889, 481, 771, 565, 53], [152, 368, 647, 26, 739, 251, 328], [270, 401, 243, 464, 401, 808, 460], [60, 714, 151, 556, 681, 304, 917], [60, 484, 905, 61, 488, 435, 369]]]


def test_generate_equals_anygpt_procedure(ours):
  _, model = ours
  g = torch.Generator().manual_seed(0)
  semantic = torch.randint(0, 1024, (2, 10), generator=g)
  prompt = torch.randint(0, 1024, (2, 6, 8), generator=g)
  out = model.generate(semantic, prompt_codes=prompt, steps=3, temperature=0.0)
  assert out[:, :, 1:].tolist() == ANYGPT_GOLDEN_STEPS3_PROMPT
