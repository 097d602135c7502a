"""The SpeechTokenizer (SEANet) encoder, rebuilt for batch inference on a loaded model.

The library's encoder is written for training: weight norm recomputes every convolution's
weight on each call, convolutions run as (batch, channels, time) `conv1d`, which oneDNN
executes far from its matmul rate on CPU, and the LSTM sees one padded batch. This module
reads the same modules once and runs them differently:

- weight norm is folded into plain weights at load time (exact: the same products);
- activations stay time-major, (batch, time, channels), and every convolution runs as a
  channels-last `conv2d` of height 1, the layout oneDNN's fast kernels (AVX-512 and AMX) want;
- convolutions run per clip at the clip's own length, with the reflect padding SConv1d uses,
  so no value from another clip or from padding reaches a code;
- the LSTM runs once over the whole batch on packed sequences (each clip's backward pass
  starts at its own last frame), which turns its per-frame matrix-vector products into
  matrix products;
- `dtype=torch.bfloat16` runs convolutions and the LSTM in bfloat16 (AMX on recent Xeons,
  tensor cores on GPUs); the quantizer always sees float32. Codes then differ from float32
  ones where the nearest codebook entry is nearly tied (measured by `tools.bench_tokenize`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def _plain_weight(conv: nn.Conv1d) -> torch.Tensor:
  """`conv`'s weight with weight norm (either torch API) evaluated: (out, in, kernel)."""
  from torch.nn.utils.weight_norm import WeightNorm
  with torch.no_grad():
    for hook in conv._forward_pre_hooks.values():
      if isinstance(hook, WeightNorm) and hook.name == "weight":
        return hook.compute_weight(conv).detach().clone()
    return conv.weight.detach().clone()  # plain, or computed by torch.nn.utils.parametrize


def _reflect_pad_time(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
  """Reflect padding along dim 1 of (batch, time, channels), as speechtokenizer's `pad1d`.

  Like `pad1d`, an input no longer than the padding is first extended with zeros on the right
  (the extension is cut off again), so short clips give the library's values.
  """
  length = x.shape[1]
  extra = max(left, right) - length + 1 if length <= max(left, right) else 0
  if extra:
    x = torch.cat([x, x.new_zeros(x.shape[0], extra, x.shape[2])], dim=1)
  n = x.shape[1]
  index = torch.cat([torch.arange(left, 0, -1), torch.arange(n), torch.arange(n - 2, n - 2 - right, -1)])
  padded = x.index_select(1, index.to(x.device))
  return padded[:, :padded.shape[1] - extra] if extra else padded


class ChannelsLastConv(nn.Module):
  """One SConv1d (non-causal, reflect padding) on (batch, time, channels) activations."""

  def __init__(self, sconv: nn.Module, dtype: torch.dtype):
    super().__init__()
    if sconv.causal or sconv.pad_mode != "reflect":
      raise ValueError("only non-causal, reflect-padded SEANet convolutions are supported "
                       f"(got causal={sconv.causal}, pad_mode={sconv.pad_mode!r})")
    conv = sconv.conv.conv
    if conv.groups != 1:
      raise ValueError("grouped SEANet convolutions are not supported")
    (self.kernel,), (self.stride,), (self.dilation,) = conv.kernel_size, conv.stride, conv.dilation
    weight = _plain_weight(conv)[:, :, None, :].to(dtype)  # (out, in, 1, kernel)
    self.register_buffer("weight", weight.contiguous(memory_format=torch.channels_last))
    self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().to(dtype))

  def _padding(self, x: torch.Tensor) -> tuple[int, int]:
    """SConv1d's (left, right) padding of time-major `x`: the receptive field's, split
    symmetrically, plus what makes the last window full."""
    from speechtokenizer.modules.conv import get_extra_padding_for_conv1d
    total = (self.kernel - 1) * self.dilation - (self.stride - 1)
    extra = get_extra_padding_for_conv1d(x.transpose(1, 2), self.kernel, self.stride, total)
    right = total // 2
    return total - right, right + extra

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """float (batch, time, in) -> (batch, ceil(time / stride), out)."""
    x = _reflect_pad_time(x, *self._padding(x))
    image = x.permute(0, 2, 1).unsqueeze(2)  # (batch, in, 1, time): a channels-last view, no copy
    y = F.conv2d(image, self.weight, self.bias, stride=(1, self.stride), dilation=(1, self.dilation))
    return y.squeeze(2).permute(0, 2, 1)

  def forward_many(self, clips: list[torch.Tensor]) -> list[torch.Tensor]:
    """`forward` on each (1, time_i, in) clip; stride-1 convolutions run as one call.

    The clips, each reflect-padded as alone, are laid end to end: every output window then
    lies inside one clip's padded span except the `kernel - 1` windows that straddle a seam,
    which are dropped. Short clips (a few hundred frames after the LSTM) thus share one large
    matrix product instead of many small ones.
    """
    if self.stride != 1 or len(clips) == 1:
      return [self(c) for c in clips]
    padded = [_reflect_pad_time(c, *self._padding(c)) for c in clips]
    image = torch.cat(padded, dim=1).permute(0, 2, 1).unsqueeze(2)
    y = F.conv2d(image, self.weight, self.bias, dilation=(1, self.dilation)).squeeze(2).permute(0, 2, 1)
    starts = [0]
    for p in padded[:-1]:
      starts.append(starts[-1] + p.shape[1])
    return [y[:, s:s + c.shape[1]] for s, c in zip(starts, clips)]


class ResnetBlock(nn.Module):
  """SEANetResnetBlock: shortcut(x) + block(x) on time-major activations."""

  def __init__(self, block: nn.Module, dtype: torch.dtype):
    super().__init__()
    self.block = nn.ModuleList(_convert(m, dtype) for m in block.block)
    self.shortcut = _convert(block.shortcut, dtype)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = x
    for layer in self.block:
      y = layer(y)
    return self.shortcut(x) + y


def _convert(module: nn.Module, dtype: torch.dtype) -> nn.Module:
  from speechtokenizer.modules.conv import SConv1d
  from speechtokenizer.modules.seanet import SEANetResnetBlock
  if isinstance(module, SConv1d):
    return ChannelsLastConv(module, dtype)
  if isinstance(module, SEANetResnetBlock):
    return ResnetBlock(module, dtype)
  if isinstance(module, (nn.ELU, nn.Identity, nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh)):
    return module  # elementwise: layout-agnostic
  raise TypeError(f"unsupported layer in the SEANet encoder: {type(module).__name__}")


class BatchEncoder(nn.Module):
  """The SEANet encoder of a loaded SpeechTokenizer, for batches of clips of any lengths.

  Args:
    encoder: `SpeechTokenizer.encoder` (a SEANetEncoder). Convolution weights are copied in
      the new layout; the LSTM is shared in float32 and copied in other dtypes.
    dtype: torch.float32 (codes as the library computes them, up to float rounding) or
      torch.bfloat16.
  """

  def __init__(self, encoder: nn.Module, dtype: torch.dtype = torch.float32):
    super().__init__()
    from speechtokenizer.modules.lstm import SLSTM
    layers = list(encoder.model)
    lstm_at = [k for k, layer in enumerate(layers) if isinstance(layer, SLSTM)]
    if len(lstm_at) > 1:
      raise ValueError("a SEANet encoder with more than one SLSTM is not supported")
    split = lstm_at[0] if lstm_at else len(layers)
    self.dtype = dtype
    self.front = nn.ModuleList(_convert(m, dtype) for m in layers[:split])
    self.slstm = None
    if lstm_at:  # shared with the library's encoder in float32, a converted copy otherwise
      self.slstm = layers[split] if dtype == torch.float32 else copy.deepcopy(layers[split]).to(dtype)
    self.back = nn.ModuleList(_convert(m, dtype) for m in layers[split + 1:])

  @staticmethod
  def _run(layers: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for layer in layers:
      x = layer(x)
    return x

  def _lstm(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
    """SLSTM over clips of different lengths at once: (1, frames_i, c) each -> (1, frames_i, c')."""
    lengths = [f.shape[1] for f in feats]
    padded = nn.utils.rnn.pad_sequence([f[0] for f in feats], batch_first=True)  # (b, t, c)
    packed = nn.utils.rnn.pack_padded_sequence(padded, torch.tensor(lengths), batch_first=True,
                                               enforce_sorted=False)
    y, _ = self.slstm.lstm(packed)
    y, _ = nn.utils.rnn.pad_packed_sequence(y, batch_first=True, total_length=padded.shape[1])
    if self.slstm.skip:
      y = y + (torch.cat([padded, padded], dim=-1) if self.slstm.bidirectional else padded)
    return [y[i:i + 1, :n] for i, n in enumerate(lengths)]

  @torch.no_grad()
  def forward(self, waves: list[torch.Tensor]) -> list[torch.Tensor]:
    """Encoder outputs of each clip, as the library's encoder gives them for the clip alone.

    Args:
      waves: float32 (samples,) tensors on the encoder's device.

    Returns:
      float32 (dimension, ceil(samples / hop)) tensors, one per clip.
    """
    feats = [self._run(self.front, w.to(self.dtype)[None, :, None]) for w in waves]
    if self.slstm is not None:
      feats = self._lstm(feats)
    for layer in self.back:
      feats = layer.forward_many(feats) if isinstance(layer, ChannelsLastConv) else [layer(f) for f in feats]
    return [f[0].T.float() for f in feats]
