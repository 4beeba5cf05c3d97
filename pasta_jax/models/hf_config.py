"""Hugging Face Gemma / Gemma 2 / Gemma 3 `config.json` -> TransformerConfig.

Reads both spellings: `rope_theta`, `rope_local_base_freq`, `rope_scaling`,
`sliding_window_pattern` (transformers 4.x Hub files) and `rope_parameters`
(flat, or per layer type), `layer_types` (transformers 5.x). The tensors:
`pasta_jax.models.hf`. What it cannot read raises `HFCheckpointError`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax.numpy as jnp

from pasta_jax import errors
from pasta_jax.models import config as config_lib
from pasta_jax.models.config import AttentionType, TransformerConfig


# Defaults of the transformers config classes, for keys a config.json omits
# (multimodal Gemma 3 text_config entries list only a few keys).
_DEFAULTS = {
    'gemma': dict(
        vocab_size=256_000, hidden_size=3072, intermediate_size=24_576,
        num_hidden_layers=28, num_attention_heads=16, head_dim=256,
        rope_theta=10_000.0),
    'gemma2': dict(
        vocab_size=256_000, hidden_size=2304, intermediate_size=9216,
        num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4,
        head_dim=256, rope_theta=10_000.0, query_pre_attn_scalar=256,
        sliding_window=4096, final_logit_softcapping=30.0,
        attn_logit_softcapping=50.0),
    'gemma3_text': dict(
        vocab_size=262_208, hidden_size=2304, intermediate_size=9216,
        num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4,
        head_dim=256, rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
        query_pre_attn_scalar=256, sliding_window=4096,
        sliding_window_pattern=6, final_logit_softcapping=None,
        attn_logit_softcapping=None),
}
# The Hugging Face model_types of the Gemma text models.
FAMILIES = tuple(_DEFAULTS)
_GELU_TANH = ('gelu_pytorch_tanh', 'gelu', 'gelu_new')
_LAYER_TYPES = {'sliding_attention': AttentionType.LOCAL_SLIDING,
                'full_attention': AttentionType.GLOBAL}


class HFCheckpointError(errors.CheckpointError, ValueError):
  """A Hugging Face checkpoint (config.json or tensor files) this converter cannot
  read: missing, malformed, or of an architecture it does not support."""


def hf_text_config(hf: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
  """(model_type, text config) of a Hugging Face config.json dict."""
  model_type = hf.get('model_type')
  if model_type == 'gemma3' and 'text_config' in hf:
    return 'gemma3_text', dict(hf['text_config'])
  if model_type not in _DEFAULTS:
    raise HFCheckpointError(f'Unsupported Hugging Face model_type {model_type!r}; '
                            f'supported: {sorted(_DEFAULTS)} and gemma3')
  return model_type, dict(hf)


def _rope_entry(entry: Mapping[str, Any] | None, what: str):
  """(theta or None, linear factor) of one rope_parameters / rope_scaling."""
  if not entry:
    return None, 1.0
  rope_type = entry.get('rope_type', entry.get('type', 'default'))
  if rope_type not in ('default', 'linear'):
    raise HFCheckpointError(f'{what}: unsupported rope_type {rope_type!r} (only '
                            '"default" and "linear")')
  factor = float(entry.get('factor', 1.0)) if rope_type == 'linear' else 1.0
  theta = entry.get('rope_theta')
  return (None if theta is None else float(theta)), factor


def _minimal_period(types: Sequence[AttentionType]) -> tuple[AttentionType, ...]:
  for p in range(1, len(types) + 1):
    if all(types[i] == types[i % p] for i in range(len(types))):
      return tuple(types[:p])
  return tuple(types)


def _matching_preset(family: str, **dims) -> TransformerConfig | None:
  prefix = {'gemma': 'gemma_', 'gemma2': 'gemma2_', 'gemma3_text': 'gemma3_'}
  for name in config_lib.PUBLIC_PRESETS:
    preset = config_lib.PRESETS[name]
    if name.startswith(prefix[family]) and all(
        getattr(preset, k) == v for k, v in dims.items()):
      return preset
  return None


def config_from_hf(hf: Mapping[str, Any], *,
                   transpose_gating_einsum: bool | None = None,
                   param_dtype: str | None = None,
                   dtype: str | None = None) -> TransformerConfig:
  """A TransformerConfig from a Hugging Face Gemma / Gemma 2 / Gemma 3 config.

  Reads both spellings: `rope_theta`, `rope_local_base_freq`, `rope_scaling`,
  `sliding_window_pattern` (transformers 4.x Hub files) and `rope_parameters`
  (flat, or per layer type), `layer_types` (transformers 5.x).

  Args:
    hf: the parsed config.json.
    transpose_gating_einsum: the gating einsum layout, which Hugging Face does
      not record. Default: that of the public preset with the same dimensions,
      else False for Gemma 1 and True for Gemma 2 and 3.
    param_dtype: default: the checkpoint's `torch_dtype` / `dtype`, else
      float32.
    dtype: activation dtype; default float32 for float32 params, else bfloat16.
  """
  family, text = hf_text_config(hf)
  defaults = _DEFAULTS[family]
  get = lambda key: text[key] if key in text else defaults.get(key)

  problems = []
  activation = text.get('hidden_activation') or text.get('hidden_act') or (
      'gelu_pytorch_tanh')
  if activation not in _GELU_TANH:
    problems.append(f'hidden activation {activation!r} (Gemma uses the tanh '
                    'GELU)')
  eps = text.get('rms_norm_eps', 1e-6)
  if abs(eps - 1e-6) > 1e-12:
    problems.append(f'rms_norm_eps {eps} (the model uses 1e-6)')
  if not text.get('tie_word_embeddings', hf.get('tie_word_embeddings', True)):
    problems.append('untied word embeddings')
  if text.get('attention_bias'):
    problems.append('attention_bias')
  if text.get('use_bidirectional_attention'):
    problems.append('bidirectional attention')
  if problems:
    raise HFCheckpointError('Unsupported Hugging Face config: ' + '; '.join(problems))

  num_layers = int(get('num_hidden_layers'))
  num_heads = int(get('num_attention_heads'))
  kv_heads = text.get('num_key_value_heads', defaults.get('num_key_value_heads',
                                                          num_heads))
  if 'layer_types' in text and text['layer_types'] is not None:
    try:
      types = [_LAYER_TYPES[t] for t in text['layer_types']]
    except KeyError as e:
      raise HFCheckpointError(f'Unsupported layer type {e.args[0]!r}; supported: '
                              f'{sorted(_LAYER_TYPES)}') from None
    if len(types) != num_layers:
      raise HFCheckpointError(f'layer_types has {len(types)} entries for '
                              f'{num_layers} layers')
  elif family == 'gemma':
    types = [AttentionType.GLOBAL] * num_layers
  else:
    period = 2 if family == 'gemma2' else int(get('sliding_window_pattern'))
    types = [AttentionType.LOCAL_SLIDING if (i + 1) % period else
             AttentionType.GLOBAL for i in range(num_layers)]

  # RoPE: per layer type (5.x nested rope_parameters), flat, or 4.x keys.
  rope_parameters = text.get('rope_parameters') or {}
  nested = any(k in rope_parameters for k in _LAYER_TYPES)
  if nested:
    global_theta, global_factor = _rope_entry(
        rope_parameters.get('full_attention'), 'rope_parameters.full_attention')
    local_theta, local_factor = _rope_entry(
        rope_parameters.get('sliding_attention'),
        'rope_parameters.sliding_attention')
  else:
    global_theta, global_factor = _rope_entry(rope_parameters, 'rope_parameters')
    _, scaling_factor = _rope_entry(text.get('rope_scaling'), 'rope_scaling')
    if scaling_factor != 1.0:
      global_factor = scaling_factor
    local_theta, local_factor = None, 1.0
    if family != 'gemma3_text':
      # Gemma 1/2 use one RoPE for every layer, scaling included.
      local_theta, local_factor = global_theta, global_factor
  if global_theta is None:
    global_theta = float(get('rope_theta'))
  if local_theta is None:
    local_theta = float(get('rope_local_base_freq') if family == 'gemma3_text'
                        else get('rope_theta'))
  if local_factor != 1.0 and AttentionType.LOCAL_SLIDING in types:
    raise HFCheckpointError('RoPE scaling on sliding-window layers is not supported '
                            f'(factor {local_factor})')
  if AttentionType.GLOBAL not in types:
    global_factor = 1.0  # No layer uses it.

  window = None
  if AttentionType.LOCAL_SLIDING in types:
    window = text.get('sliding_window') or text.get('sliding_window_size') or (
        defaults.get('sliding_window'))
    window = int(window)

  embed_dim = int(get('hidden_size'))
  hidden_dim = int(get('intermediate_size'))
  head_dim = int(get('head_dim') or embed_dim // num_heads)
  if transpose_gating_einsum is None:
    preset = _matching_preset(
        family, num_layers=num_layers, embed_dim=embed_dim,
        hidden_dim=hidden_dim, num_heads=num_heads, head_dim=head_dim,
        num_kv_heads=int(kv_heads))
    transpose_gating_einsum = (preset.transpose_gating_einsum if preset else
                               family != 'gemma')
  if param_dtype is None:
    param_dtype = text.get('torch_dtype') or text.get('dtype') or hf.get(
        'torch_dtype') or hf.get('dtype') or 'float32'
  if dtype is None:
    dtype = 'float32' if jnp.dtype(param_dtype) == jnp.float32 else 'bfloat16'
  post_norms = family != 'gemma'
  soft_cap = lambda key: None if get(key) is None else float(get(key))
  return TransformerConfig(
      num_layers=num_layers, vocab_size=int(get('vocab_size')),
      embed_dim=embed_dim, hidden_dim=hidden_dim, num_heads=num_heads,
      head_dim=head_dim, num_kv_heads=int(kv_heads),
      attention_pattern=_minimal_period(types), sliding_window_size=window,
      attn_logits_soft_cap=(soft_cap('attn_logit_softcapping')
                            if post_norms else None),
      final_logit_softcap=(soft_cap('final_logit_softcapping')
                           if post_norms else None),
      query_pre_attn_scalar=(float(get('query_pre_attn_scalar'))
                             if post_norms else None),
      use_post_attn_norm=post_norms, use_post_ffw_norm=post_norms,
      use_qk_norm=family == 'gemma3_text',
      transpose_gating_einsum=bool(transpose_gating_einsum),
      global_rope_base=global_theta, local_rope_base=local_theta,
      global_rope_scale_factor=global_factor, dtype=dtype,
      param_dtype=param_dtype)
