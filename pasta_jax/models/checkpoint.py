"""Gemma checkpoints: official Flax/orbax (flat or nested) and Hugging Face safetensors.

* `load_params(dir, config)`: an orbax checkpoint, either in the official FLAT
  layout (`transformer/layer_0/attn/q_einsum` -> {'w': ...}, as released on
  Kaggle) or NESTED like the model (what `save_params` writes), validated
  against `config` from the checkpoint metadata before any tensor is read,
  restored in config.param_dtype (and straight into `shardings` when given).
* `load_hf_checkpoint(dir, config=None)`: a Hugging Face Gemma / Gemma 2 /
  Gemma 3 (text) checkpoint (`config.json` + safetensors, sharded or not),
  converted to the model's tree; without a config it is derived from
  `config.json` (`config_from_hf`).
* `save_converted` / `load_converted`: the params (orbax, nested) and the
  TransformerConfig as JSON in one directory (scripts/convert_hf_checkpoint.py).

A checkpoint that does not fit the config is refused with one
`CheckpointMismatchError` listing every missing, unexpected and mis-shaped
tensor (and, for Hugging Face, every config field that differs).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from pasta_jax.models import config as config_lib
from pasta_jax.models import safetensors_reader
from pasta_jax.models import transformer
from pasta_jax.models.config import AttentionType, TransformerConfig

EMBEDDING = 'embedder/input_embedding'
# Vision parts of multimodal Gemma 3 checkpoints; the text model skips them.
_OFFICIAL_IGNORED = ('SigLiPFromPatches_0/', 'vision_encoder/',
                     'embedder/mm_input_projection',
                     'embedder/mm_soft_embedding_norm')
_HF_IGNORED_PREFIXES = ('vision_tower.', 'multi_modal_projector.',
                        'model.vision_tower.', 'model.multi_modal_projector.')
_HF_PREFIXES = ('model.', 'language_model.model.', 'model.language_model.')
CONFIG_FILE = 'config.json'
PARAMS_DIR = 'params'


class CheckpointMismatchError(ValueError):
  """A checkpoint that does not match the config; lists every difference.

  Attributes:
    missing: tensors the config needs that the checkpoint lacks.
    unexpected: tensors of the checkpoint the config has no place for.
    mis_shaped: (name, found shape, expected shape) triples.
    config_fields: (field, checkpoint value, config value) triples.
  """

  def __init__(self, source: str, missing: Sequence[str] = (),
               unexpected: Sequence[str] = (),
               mis_shaped: Sequence[tuple[str, Any, Any]] = (),
               config_fields: Sequence[tuple[str, Any, Any]] = (),
               hint: str = ''):
    self.missing = list(missing)
    self.unexpected = list(unexpected)
    self.mis_shaped = list(mis_shaped)
    self.config_fields = list(config_fields)
    lines = [f'Checkpoint {source} does not match the model config:']
    for field, found, expected in self.config_fields:
      lines.append(f'  config field {field}: checkpoint {found!r}, '
                   f'config {expected!r}')
    lines += [f'  missing: {name}' for name in self.missing]
    lines += [f'  unexpected: {name}' for name in self.unexpected]
    lines += [f'  mis-shaped: {name}: checkpoint {tuple(found)}, expected '
              f'{tuple(expected)}' for name, found, expected in self.mis_shaped]
    if hint:
      lines.append(hint)
    super().__init__('\n'.join(lines))


def flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """{'a': {'b': x}} -> {'a/b': x}."""
  flat = {}
  for key, value in tree.items():
    path = f'{prefix}{key}'
    if isinstance(value, Mapping):
      flat.update(flatten(value, path + '/'))
    else:
      flat[path] = value
  return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{'a/b': x} -> {'a': {'b': x}}."""
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    *parents, leaf = path.split('/')
    node = tree
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return tree


def _expected_shapes(config: TransformerConfig) -> dict[str, tuple[int, ...]]:
  return {p: tuple(x.shape)
          for p, x in flatten(transformer.param_shapes(config)).items()}


def _vocab_hint(config: TransformerConfig, rows: int) -> str:
  return (f'The checkpoint embedding has {rows} rows for vocab_size '
          f'{config.vocab_size} (the official Gemma 1/2 Flax checkpoints pad '
          'the 256000-token vocabulary to 256128 rows, multimodal Gemma 3 '
          'checkpoints add image tokens): pass trim_vocab=True to keep the '
          f'first {config.vocab_size} rows, or set vocab_size={rows}.')


def _compare(expected: Mapping[str, tuple[int, ...]],
             found: Mapping[str, tuple[int, ...]], config: TransformerConfig,
             trim_vocab: bool):
  """(missing, unexpected, mis_shaped, hint), comparing path -> shape maps.

  With trim_vocab an embedding with more rows than vocab_size is accepted.
  """
  missing = sorted(set(expected) - set(found))
  unexpected = sorted(set(found) - set(expected))
  mis_shaped, hint = [], ''
  for path in sorted(set(expected) & set(found)):
    want, got = tuple(expected[path]), tuple(found[path])
    if got == want:
      continue
    if (path == EMBEDDING and len(got) == 2 and got[1] == want[1] and
        got[0] > want[0]):
      if trim_vocab:
        continue
      hint = _vocab_hint(config, got[0])
    mis_shaped.append((path, got, want))
  return missing, unexpected, mis_shaped, hint


# ----------------------------------------------------------------------------
# Orbax checkpoints (official FLAT layout, or NESTED like the model).


def _flatten_keys(tree: Mapping[str, Any], prefix=()) -> dict[tuple, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten_keys(value, prefix + (key,)))
    else:
      flat[prefix + (key,)] = value
  return flat


def _model_path(key: tuple[str, ...]) -> str | None:
  """Model param path of a stored key tuple; None for a skipped vision tensor."""
  if len(key) == 2 and key[0].startswith('transformer/'):
    # FLAT: 'transformer/<module path>' -> {'<param>': array}; the MLP's
    # einsums are stored as modules with a 'w' the model does not have.
    module, leaf = key[0][len('transformer/'):], key[1]
    if module.endswith(('/mlp/gating_einsum', '/mlp/linear')) and leaf == 'w':
      path = module
    else:
      path = f'{module}/{leaf}'
  else:
    path = '/'.join(key)
  if path.startswith(_OFFICIAL_IGNORED) or key[0].startswith(_OFFICIAL_IGNORED):
    return None
  return path


def _orbax_metadata(path: str) -> dict[tuple, Any]:
  """Stored key tuple -> array metadata (with .shape) of an orbax checkpoint."""
  metadata = ocp.PyTreeCheckpointer().metadata(path)
  metadata = getattr(metadata, 'item_metadata', metadata)
  metadata = getattr(metadata, 'tree', metadata)
  if not isinstance(metadata, Mapping):
    raise ValueError(f'{path}: not an orbax PyTree checkpoint of a dict')
  return _flatten_keys(metadata)


def load_params(path: str, config: TransformerConfig, *,
                trim_vocab: bool = False, shardings=None):
  """Loads params from an orbax checkpoint directory (official FLAT or NESTED).

  Args:
    path: the checkpoint directory (the one holding `_METADATA`).
    config: the architecture the checkpoint must match.
    trim_vocab: accept an embedding with more rows than config.vocab_size and
      keep the first vocab_size rows (the official Gemma 1/2 checkpoints have
      256128 rows for a 256000-token vocabulary).
    shardings: optional tree of `jax.sharding.Sharding` structured like the
      params (e.g. `sharding.param_shardings`); each array is restored straight
      into it. Default: the first local device.

  Returns:
    The nested param tree, arrays in config.param_dtype.

  Raises:
    CheckpointMismatchError: names or shapes differ from `config`'s.
  """
  path = os.path.abspath(path)
  stored = _orbax_metadata(path)
  # A nested tree may come wrapped as {'params': tree}.
  wrapped = {k[0] for k in stored} == {'params'}
  to_stored: dict[str, tuple] = {}
  duplicates, skipped = [], []
  for key in stored:
    model_path = _model_path(key[1:] if wrapped else key)
    if model_path is None:
      skipped.append('/'.join(key))
    elif model_path in to_stored:
      duplicates.append('/'.join(key))
    else:
      to_stored[model_path] = key
  if skipped:
    logging.info('%s: skipping %d non-text tensors', path, len(skipped))
  expected = _expected_shapes(config)
  found = {p: tuple(stored[k].shape) for p, k in to_stored.items()}
  missing, unexpected, mis_shaped, hint = _compare(expected, found, config,
                                                   trim_vocab)
  unexpected += duplicates
  if any('stacked_layers' in p for p in unexpected):
    hint += (' The checkpoint stores layers stacked by attention type '
             '(stacked_layers/...), a layout this loader does not read.')
  if missing or unexpected or mis_shaped:
    raise CheckpointMismatchError(path, missing, unexpected, mis_shaped,
                                  hint=hint.strip())

  dtype = jnp.dtype(config.param_dtype)
  if shardings is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    flat_shardings = {p: device for p in expected}
  else:
    flat_shardings = flatten(shardings)
    if set(flat_shardings) != set(expected):
      raise ValueError('shardings must be structured like the params; differs '
                       f'at {sorted(set(flat_shardings) ^ set(expected))}')
  item, restore_args = {}, {}
  for model_path, key in to_stored.items():
    shape = expected[model_path]
    sharding = flat_shardings[model_path]
    node_item, node_args = item, restore_args
    for k in key[:-1]:
      node_item = node_item.setdefault(k, {})
      node_args = node_args.setdefault(k, {})
    node_item[key[-1]] = jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
    # strict=False lets orbax keep the first rows of a larger embedding table
    # (trim_vocab, checked above); every other shape matched exactly.
    node_args[key[-1]] = ocp.ArrayRestoreArgs(
        sharding=sharding, global_shape=shape, dtype=dtype,
        strict=found[model_path] == shape)
  # Skipped (vision) tensors need orbax's partial restore.
  partial = {'partial_restore': True} if skipped else {}
  restored = ocp.PyTreeCheckpointer().restore(
      path, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                        **partial))
  flat_restored = _flatten_keys(restored)
  return unflatten({p: flat_restored[k] for p, k in to_stored.items()})


def save_params(path: str, params) -> None:
  """Writes params (nested, like the model) as an orbax checkpoint."""
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.abspath(path), params)
  checkpointer.wait_until_finished()


def save_converted(out_dir: str, params, config: TransformerConfig) -> None:
  """`out_dir/params` (orbax, nested) and `out_dir/config.json`."""
  os.makedirs(out_dir, exist_ok=True)
  save_params(os.path.join(out_dir, PARAMS_DIR), params)
  with open(os.path.join(out_dir, CONFIG_FILE), 'w') as f:
    f.write(config.to_json() + '\n')


def load_converted(out_dir: str, *, shardings=None):
  """(config, params) from a directory written by `save_converted`."""
  with open(os.path.join(out_dir, CONFIG_FILE)) as f:
    config = TransformerConfig.from_json(f.read())
  params = load_params(os.path.join(out_dir, PARAMS_DIR), config,
                       shardings=shardings)
  return config, params


# ----------------------------------------------------------------------------
# Hugging Face config.json -> TransformerConfig.

# Defaults of the transformers config classes, for keys a config.json omits
# (multimodal Gemma 3 text_config entries list only a few keys).
_HF_DEFAULTS = {
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
_GELU_TANH = ('gelu_pytorch_tanh', 'gelu', 'gelu_new')
_LAYER_TYPES = {'sliding_attention': AttentionType.LOCAL_SLIDING,
                'full_attention': AttentionType.GLOBAL}


def hf_text_config(hf: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
  """(model_type, text config) of a Hugging Face config.json dict."""
  model_type = hf.get('model_type')
  if model_type == 'gemma3' and 'text_config' in hf:
    return 'gemma3_text', dict(hf['text_config'])
  if model_type not in _HF_DEFAULTS:
    raise ValueError(f'Unsupported Hugging Face model_type {model_type!r}; '
                     f'supported: {sorted(_HF_DEFAULTS)} and gemma3')
  return model_type, dict(hf)


def _rope_entry(entry: Mapping[str, Any] | None, what: str):
  """(theta or None, linear factor) of one rope_parameters / rope_scaling."""
  if not entry:
    return None, 1.0
  rope_type = entry.get('rope_type', entry.get('type', 'default'))
  if rope_type not in ('default', 'linear'):
    raise ValueError(f'{what}: unsupported rope_type {rope_type!r} (only '
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
  defaults = _HF_DEFAULTS[family]
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
    raise ValueError('Unsupported Hugging Face config: ' + '; '.join(problems))

  num_layers = int(get('num_hidden_layers'))
  num_heads = int(get('num_attention_heads'))
  kv_heads = text.get('num_key_value_heads', defaults.get('num_key_value_heads',
                                                          num_heads))
  if 'layer_types' in text and text['layer_types'] is not None:
    try:
      types = [_LAYER_TYPES[t] for t in text['layer_types']]
    except KeyError as e:
      raise ValueError(f'Unsupported layer type {e.args[0]!r}; supported: '
                       f'{sorted(_LAYER_TYPES)}') from None
    if len(types) != num_layers:
      raise ValueError(f'layer_types has {len(types)} entries for '
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
    raise ValueError('RoPE scaling on sliding-window layers is not supported '
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


_NON_ARCHITECTURE = ('dtype', 'param_dtype', 'remat', 'attention_pattern',
                     'query_pre_attn_scalar')


def architecture_differences(found: TransformerConfig,
                             expected: TransformerConfig, *,
                             trim_vocab: bool = False):
  """(field, found, expected) for every architecture field that differs."""
  diffs = []
  for field in dataclasses.fields(TransformerConfig):
    name = field.name
    if name in _NON_ARCHITECTURE:
      continue
    a, b = getattr(found, name), getattr(expected, name)
    if name == 'vocab_size' and trim_vocab and a >= b:
      continue
    if name == 'sliding_window_size' and (
        AttentionType.LOCAL_SLIDING not in expected.attention_types and
        AttentionType.LOCAL_SLIDING not in found.attention_types):
      continue
    if a != b:
      diffs.append((name, a, b))
  for name in ('attention_types', 'query_scale'):
    a, b = getattr(found, name), getattr(expected, name)
    if a != b:
      diffs.append((name, a, b))
  return diffs


# ----------------------------------------------------------------------------
# Hugging Face tensors -> model params.


@dataclasses.dataclass(frozen=True)
class _Rule:
  """One model param made from Hugging Face tensors."""

  target: str
  sources: tuple[str, ...]
  shapes: tuple[tuple[int, ...], ...]
  convert: Callable[..., np.ndarray]


def _hf_rules(config: TransformerConfig, family: str, prefix: str):
  n, k, h = config.num_heads, config.num_kv_heads, config.head_dim
  d, f, v = config.embed_dim, config.hidden_dim, config.vocab_size
  as_is = lambda x: x
  # HF linear weights are (out, in).
  q_heads = lambda w: w.reshape(n, h, d).transpose(0, 2, 1)  # -> (N, D, H)
  kv_heads = lambda w: w.reshape(k, h, d).transpose(0, 2, 1)  # -> (K, D, H)
  rules = [
      _Rule(EMBEDDING, (f'{prefix}embed_tokens.weight',), ((v, d),), as_is),
      _Rule('final_norm/scale', (f'{prefix}norm.weight',), ((d,),), as_is),
  ]
  for i in range(config.num_layers):
    hf, ours = f'{prefix}layers.{i}.', f'layer_{i}/'
    attn = f'{hf}self_attn.'
    qkv_names = tuple(f'{attn}{p}_proj.weight' for p in 'qkv')
    qkv_shapes = ((n * h, d), (k * h, d), (k * h, d))
    if config.use_qkv_einsum:
      rules.append(_Rule(
          f'{ours}attn/qkv_einsum/w', qkv_names, qkv_shapes,
          lambda q, k_, v_: np.stack([q_heads(q), q_heads(k_), q_heads(v_)])))
    else:
      rules.append(_Rule(f'{ours}attn/q_einsum/w', qkv_names[:1],
                         qkv_shapes[:1], q_heads))
      rules.append(_Rule(
          f'{ours}attn/kv_einsum/w', qkv_names[1:], qkv_shapes[1:],
          lambda k_, v_: np.stack([kv_heads(k_), kv_heads(v_)])))
    rules.append(_Rule(
        f'{ours}attn/attn_vec_einsum/w', (f'{attn}o_proj.weight',),
        ((d, n * h),), lambda w: w.T.reshape(n, h, d)))
    if config.use_qk_norm:
      rules.append(_Rule(f'{ours}attn/_query_norm/scale',
                         (f'{attn}q_norm.weight',), ((h,),), as_is))
      rules.append(_Rule(f'{ours}attn/_key_norm/scale',
                         (f'{attn}k_norm.weight',), ((h,),), as_is))
    norms = [('input_layernorm', 'pre_attention_norm')]
    if family == 'gemma':
      # Gemma 1 HF calls the pre-MLP norm "post_attention_layernorm".
      norms.append(('post_attention_layernorm', 'pre_ffw_norm'))
    else:
      norms.append(('pre_feedforward_layernorm', 'pre_ffw_norm'))
      if config.use_post_attn_norm:
        norms.append(('post_attention_layernorm', 'post_attention_norm'))
      if config.use_post_ffw_norm:
        norms.append(('post_feedforward_layernorm', 'post_ffw_norm'))
    for hf_name, our_name in norms:
      rules.append(_Rule(f'{ours}{our_name}/scale', (f'{hf}{hf_name}.weight',),
                         ((d,),), as_is))
    mlp = f'{hf}mlp.'
    if config.transpose_gating_einsum:
      gating = lambda g, u: np.stack([g, u])  # (2, F, D)
    else:
      gating = lambda g, u: np.stack([g.T, u.T])  # (2, D, F)
    rules.append(_Rule(
        f'{ours}mlp/gating_einsum',
        (f'{mlp}gate_proj.weight', f'{mlp}up_proj.weight'), ((f, d), (f, d)),
        gating))
    rules.append(_Rule(f'{ours}mlp/linear', (f'{mlp}down_proj.weight',),
                       ((d, f),), lambda w: w.T))
  return rules


def _hf_ignored(name: str) -> bool:
  return (name.startswith(_HF_IGNORED_PREFIXES) or name == 'lm_head.weight' or
          name.endswith('rotary_emb.inv_freq'))


def convert_hf_tensors(tensors: Mapping[str, np.ndarray],
                       config: TransformerConfig, family: str, *,
                       trim_vocab: bool = False, source: str = 'checkpoint',
                       config_fields=()):
  """Model params (numpy, config.param_dtype) from Hugging Face tensors.

  `family` is the Hugging Face model_type ('gemma', 'gemma2', 'gemma3_text'),
  which fixes the norm naming. `lm_head.weight` is ignored (tied, as in HF),
  and so are vision tensors of multimodal checkpoints.
  """
  if family not in _HF_DEFAULTS:
    raise ValueError(f'Unknown Hugging Face family {family!r}')
  prefix = next((p for p in _HF_PREFIXES if f'{p}embed_tokens.weight' in tensors),
                'model.')
  dtype = jnp.dtype(config.param_dtype)
  missing, mis_shaped, used, hint = [], [], set(), ''
  params = {}
  for rule in _hf_rules(config, family, prefix):
    arrays = []
    for name, want in zip(rule.sources, rule.shapes):
      if name not in tensors:
        missing.append(f'{name} (-> {rule.target})')
        continue
      used.add(name)
      got = tuple(tensors[name].shape)
      if got != want:
        if (rule.target == EMBEDDING and len(got) == 2 and got[1] == want[1]
            and got[0] > want[0]):
          if trim_vocab:
            arrays.append(tensors[name][:want[0]])
            continue
          hint = _vocab_hint(config, got[0])
        mis_shaped.append((f'{name} (-> {rule.target})', got, want))
        continue
      arrays.append(tensors[name])
    if len(arrays) == len(rule.sources):
      params[rule.target] = np.asarray(
          rule.convert(*(np.asarray(a) for a in arrays)), dtype=dtype)
  unexpected = sorted(n for n in tensors if n not in used and not _hf_ignored(n))
  if missing or unexpected or mis_shaped or config_fields:
    raise CheckpointMismatchError(source, missing, unexpected, mis_shaped,
                                  config_fields, hint)
  return unflatten(params)


def load_hf_checkpoint(hf_dir: str, config: TransformerConfig | None = None, *,
                       trim_vocab: bool = False):
  """(config, params) from a Hugging Face checkpoint directory.

  Without `config` it is derived from `config.json`. With one (e.g. a preset),
  the checkpoint must match it: the config.json's architecture and every
  tensor name and shape, or one CheckpointMismatchError lists all differences.
  The params are numpy arrays in config.param_dtype.
  """
  with open(os.path.join(hf_dir, CONFIG_FILE)) as f:
    hf = json.load(f)
  family, _ = hf_text_config(hf)
  if config is None:
    config = config_from_hf(hf)
    differences = []
  else:
    found = config_from_hf(
        hf, transpose_gating_einsum=config.transpose_gating_einsum,
        param_dtype=config.param_dtype, dtype=config.dtype)
    differences = architecture_differences(found, config, trim_vocab=trim_vocab)
  tensors = safetensors_reader.read_dir(hf_dir)
  params = convert_hf_tensors(tensors, config, family, trim_vocab=trim_vocab,
                              source=hf_dir, config_fields=differences)
  return config, params
