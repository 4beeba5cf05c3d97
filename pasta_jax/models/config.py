"""Model configuration: one frozen dataclass, presets for public Gemma sizes and CPU sizes.

`get_config('gemma2_2b')` returns a preset; `get_config('small', vocab_size=1024)`
overrides fields. The public presets reproduce the official Gemma architectures
(numbers as in google-deepmind/gemma and the Hugging Face configs); the CPU presets
(`tiny`, `small`, `base100m`) are Gemma 3 style models for this project's own small
sentencepiece vocabularies, trained from scratch.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any, Mapping

import jax.numpy as jnp


class AttentionType(enum.StrEnum):
  """Attention span of one layer."""

  GLOBAL = 'global'
  LOCAL_SLIDING = 'local_sliding'


GLOBAL = AttentionType.GLOBAL
LOCAL = AttentionType.LOCAL_SLIDING

# Gemma 2: local and global layers alternate, layer 0 is local.
GEMMA2_PATTERN = (LOCAL, GLOBAL)
# Gemma 3: five local layers, then one global layer.
GEMMA3_PATTERN = (LOCAL,) * 5 + (GLOBAL,)


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Architecture and numerics of a Gemma-family decoder.

  Attributes:
    num_layers: number of transformer blocks.
    vocab_size: rows of the (tied) embedding table = number of logits.
    embed_dim: D, width of the residual stream.
    hidden_dim: F, width of the GeGLU MLP.
    num_heads: N, query heads.
    head_dim: H, width of one head (even, RoPE rotates halves).
    num_kv_heads: K, key/value heads; N % K == 0 (MHA K == N, MQA K == 1, else
      GQA). K == N stores the fused `qkv_einsum` param, as Gemma 1 7B does.
    attention_pattern: attention types repeated over the layers: layer i has
      type attention_pattern[i % len(attention_pattern)].
    sliding_window_size: W of local layers: a query at position i sees a key
      at position j only if i - W < j (the visibility mask decides the rest).
    attn_logits_soft_cap: cap * tanh(scores / cap) before masking (Gemma 2).
    final_logit_softcap: cap * tanh(logits / cap) on the output (Gemma 2).
    query_pre_attn_scalar: queries are multiplied by this ** -0.5; None means
      head_dim (Gemma 2 27B uses 144 and Gemma 3 27B 168, i.e. D / N).
    use_post_attn_norm: RMSNorm on the attention output (Gemma 2, 3).
    use_post_ffw_norm: RMSNorm on the MLP output (Gemma 2, 3).
    use_qk_norm: RMSNorm over head_dim of queries and keys (Gemma 3).
    transpose_gating_einsum: store `mlp/gating_einsum` as (2, F, D) instead of
      (2, D, F) (Gemma 2 9B/27B and all Gemma 3 checkpoints).
    global_rope_base: RoPE base frequency of global layers.
    local_rope_base: RoPE base frequency of local (sliding) layers.
    global_rope_scale_factor: linear RoPE scaling (positions divided by it),
      global layers only (Gemma 3 4B/12B/27B: 8).
    dtype: activation dtype.
    param_dtype: parameter dtype.
    remat: rematerialise each block in the backward pass (nn.remat).
  """

  num_layers: int
  vocab_size: int
  embed_dim: int
  hidden_dim: int
  num_heads: int
  head_dim: int
  num_kv_heads: int
  attention_pattern: tuple[AttentionType, ...] = (GLOBAL,)
  sliding_window_size: int | None = None
  attn_logits_soft_cap: float | None = None
  final_logit_softcap: float | None = None
  query_pre_attn_scalar: float | None = None
  use_post_attn_norm: bool = False
  use_post_ffw_norm: bool = False
  use_qk_norm: bool = False
  transpose_gating_einsum: bool = False
  global_rope_base: float = 10_000.0
  local_rope_base: float = 10_000.0
  global_rope_scale_factor: float = 1.0
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  remat: bool = False

  def __post_init__(self):
    set_ = lambda name, value: object.__setattr__(self, name, value)
    if isinstance(self.attention_pattern, (str, AttentionType)):
      raise ValueError('attention_pattern must be a sequence of attention '
                       f'types, got {self.attention_pattern!r}')
    try:
      set_('attention_pattern',
           tuple(AttentionType(t) for t in self.attention_pattern))
    except ValueError as e:
      raise ValueError(f'attention_pattern: {e}; valid types are '
                       f'{[t.value for t in AttentionType]}') from None
    for name in ('dtype', 'param_dtype'):
      try:
        set_(name, jnp.dtype(getattr(self, name)).name)
      except TypeError:
        raise ValueError(f'{name}: not a dtype: {getattr(self, name)!r}') from None
    problems = []
    for name in ('num_layers', 'vocab_size', 'embed_dim', 'hidden_dim',
                 'num_heads', 'head_dim', 'num_kv_heads'):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        problems.append(f'{name} must be a positive int, got {value!r}')
    if not problems:
      if self.num_heads % self.num_kv_heads:
        problems.append(f'num_heads ({self.num_heads}) must be a multiple of '
                        f'num_kv_heads ({self.num_kv_heads})')
      if self.head_dim % 2:
        problems.append(f'head_dim must be even for RoPE, got {self.head_dim}')
    if not self.attention_pattern:
      problems.append('attention_pattern is empty')
    if LOCAL in self.attention_types and not (
        isinstance(self.sliding_window_size, int) and
        self.sliding_window_size >= 1):
      problems.append('local_sliding layers need sliding_window_size >= 1, got '
                      f'{self.sliding_window_size!r}')
    for name in ('attn_logits_soft_cap', 'final_logit_softcap',
                 'query_pre_attn_scalar'):
      value = getattr(self, name)
      if value is not None and not value > 0:
        problems.append(f'{name} must be None or > 0, got {value!r}')
    if not self.global_rope_scale_factor >= 1.0:
      problems.append('global_rope_scale_factor must be >= 1, got '
                      f'{self.global_rope_scale_factor!r}')
    if not (self.global_rope_base > 0 and self.local_rope_base > 0):
      problems.append('RoPE base frequencies must be > 0')
    if problems:
      raise ValueError('Invalid TransformerConfig: ' + '; '.join(problems))

  @property
  def attention_types(self) -> tuple[AttentionType, ...]:
    """The attention type of every layer."""
    pattern = self.attention_pattern
    if not pattern or not isinstance(self.num_layers, int):
      return ()
    return tuple(pattern[i % len(pattern)] for i in range(self.num_layers))

  @property
  def use_qkv_einsum(self) -> bool:
    """Fused q/k/v projection (3, N, D, H), stored when K == N."""
    return self.num_kv_heads == self.num_heads

  @property
  def query_scale(self) -> float:
    scalar = self.query_pre_attn_scalar
    return float(self.head_dim if scalar is None else scalar) ** -0.5

  def rope(self, attn_type: AttentionType) -> tuple[float, float]:
    """(base frequency, scale factor) of RoPE for a layer type."""
    if attn_type == LOCAL:
      return self.local_rope_base, 1.0
    return self.global_rope_base, self.global_rope_scale_factor

  def to_dict(self) -> dict[str, Any]:
    """A JSON-serialisable dict; `from_dict` inverts it."""
    d = dataclasses.asdict(self)
    d['attention_pattern'] = [t.value for t in self.attention_pattern]
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> TransformerConfig:
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise ValueError(f'Unknown TransformerConfig fields: {unknown}')
    return cls(**d)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> TransformerConfig:
    return cls.from_dict(json.loads(text))


def _gemma1(**kw) -> TransformerConfig:
  return TransformerConfig(vocab_size=256_000, dtype='bfloat16',
                           param_dtype='bfloat16', **kw)


def _gemma2(**kw) -> TransformerConfig:
  return TransformerConfig(
      vocab_size=256_000, attention_pattern=GEMMA2_PATTERN,
      sliding_window_size=4096, attn_logits_soft_cap=50.0,
      final_logit_softcap=30.0, use_post_attn_norm=True, use_post_ffw_norm=True,
      dtype='bfloat16', param_dtype='bfloat16', **kw)


def _gemma3(**kw) -> TransformerConfig:
  return TransformerConfig(
      vocab_size=262_144, attention_pattern=GEMMA3_PATTERN,
      use_post_attn_norm=True, use_post_ffw_norm=True, use_qk_norm=True,
      transpose_gating_einsum=True, local_rope_base=10_000.0,
      global_rope_base=1_000_000.0, dtype='bfloat16', param_dtype='bfloat16',
      **kw)


def _cpu(**kw) -> TransformerConfig:
  """Gemma 3 style, float32: QK-norm, post norms, local/global RoPE bases."""
  return TransformerConfig(
      use_post_attn_norm=True, use_post_ffw_norm=True, use_qk_norm=True,
      transpose_gating_einsum=True, local_rope_base=10_000.0,
      global_rope_base=1_000_000.0, **kw)


# Public sizes. Gemma 1 and 2: vocabulary 256000 (the official Flax checkpoints
# store 128 extra padding rows, 256128: see checkpoint.load_params(trim_vocab)).
PRESETS: dict[str, TransformerConfig] = {
    'gemma_2b': _gemma1(
        num_layers=18, embed_dim=2048, hidden_dim=16_384, num_heads=8,
        head_dim=256, num_kv_heads=1),
    'gemma_7b': _gemma1(
        num_layers=28, embed_dim=3072, hidden_dim=24_576, num_heads=16,
        head_dim=256, num_kv_heads=16),
    'gemma2_2b': _gemma2(
        num_layers=26, embed_dim=2304, hidden_dim=9216, num_heads=8,
        head_dim=256, num_kv_heads=4, query_pre_attn_scalar=256),
    'gemma2_9b': _gemma2(
        num_layers=42, embed_dim=3584, hidden_dim=14_336, num_heads=16,
        head_dim=256, num_kv_heads=8, query_pre_attn_scalar=256,
        transpose_gating_einsum=True),
    'gemma2_27b': _gemma2(
        num_layers=46, embed_dim=4608, hidden_dim=36_864, num_heads=32,
        head_dim=128, num_kv_heads=16, query_pre_attn_scalar=144,
        transpose_gating_einsum=True),
    'gemma3_1b': _gemma3(
        num_layers=26, embed_dim=1152, hidden_dim=6912, num_heads=4,
        head_dim=256, num_kv_heads=1, query_pre_attn_scalar=256,
        sliding_window_size=512),
    'gemma3_4b': _gemma3(
        num_layers=34, embed_dim=2560, hidden_dim=10_240, num_heads=8,
        head_dim=256, num_kv_heads=4, query_pre_attn_scalar=256,
        sliding_window_size=1024, global_rope_scale_factor=8.0),
    'gemma3_12b': _gemma3(
        num_layers=48, embed_dim=3840, hidden_dim=15_360, num_heads=16,
        head_dim=256, num_kv_heads=8, query_pre_attn_scalar=256,
        sliding_window_size=1024, global_rope_scale_factor=8.0),
    'gemma3_27b': _gemma3(
        num_layers=62, embed_dim=5376, hidden_dim=21_504, num_heads=32,
        head_dim=128, num_kv_heads=16, query_pre_attn_scalar=168,
        sliding_window_size=1024, global_rope_scale_factor=8.0),
    # CPU sizes (vocab_size is meant to be overridden with the tokenizer's).
    # tiny: ~1.0M params with vocab 512; for tests.
    'tiny': _cpu(
        num_layers=4, vocab_size=512, embed_dim=128, hidden_dim=512,
        num_heads=4, head_dim=32, num_kv_heads=2,
        attention_pattern=(LOCAL, GLOBAL), sliding_window_size=32),
    # small: ~13.9M params with vocab 2048; for the synthetic benchmark.
    'small': _cpu(
        num_layers=6, vocab_size=2048, embed_dim=384, hidden_dim=1536,
        num_heads=6, head_dim=64, num_kv_heads=2,
        attention_pattern=(LOCAL, LOCAL, GLOBAL), sliding_window_size=128),
    # base100m: ~100M params with vocab 4096.
    'base100m': _cpu(
        num_layers=12, vocab_size=4096, embed_dim=768, hidden_dim=2816,
        num_heads=12, head_dim=64, num_kv_heads=4,
        attention_pattern=GEMMA3_PATTERN, sliding_window_size=512),
}

PUBLIC_PRESETS = tuple(name for name in PRESETS if name.startswith('gemma'))
CPU_PRESETS = ('tiny', 'small', 'base100m')


def get_config(name: str, **overrides: Any) -> TransformerConfig:
  """A preset by name, with fields replaced by `overrides`."""
  if name not in PRESETS:
    raise ValueError(f'Unknown model preset {name!r}; presets: {sorted(PRESETS)}')
  fields = {f.name for f in dataclasses.fields(TransformerConfig)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f'Unknown TransformerConfig fields {unknown}; fields: '
                     f'{sorted(fields)}')
  return dataclasses.replace(PRESETS[name], **overrides)
