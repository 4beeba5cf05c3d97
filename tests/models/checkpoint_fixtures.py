"""Writers of test checkpoints in the official orbax FLAT layout and the Hugging
Face safetensors layout (files by the safetensors package's writer). Independent
of the loaders: the inverse transforms are written out here from the
parameter layouts in docs/models.md."""

import json
import os

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
from safetensors.numpy import save_file

from pasta_jax.models.config import AttentionType
from tests.models import helpers


def _leaves(tree, prefix=()):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _leaves(value, prefix + (key,))
    else:
      yield prefix + (key,), np.asarray(value)


def official_flat(params, extra=None):
  """{'transformer/<module>': {'<param>': array}}, MLP einsums under 'w'."""
  flat = {}
  for path, value in _leaves(params):
    if path[-2] == 'mlp':  # mlp/gating_einsum, mlp/linear are modules with 'w'
      module, leaf = path, 'w'
    else:
      module, leaf = path[:-1], path[-1]
    flat.setdefault('transformer/' + '/'.join(module), {})[leaf] = value
  for key, value in (extra or {}).items():
    flat.setdefault(key, {}).update(value)
  return flat


def save_orbax(path, tree):
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.abspath(path), tree)
  checkpointer.wait_until_finished()


def hf_state_dict(params, config, family):
  """Hugging Face tensor names and layouts of a nested param tree."""
  n, k, h = config.num_heads, config.num_kv_heads, config.head_dim
  d = config.embed_dim
  p = {'/'.join(path): v for path, v in _leaves(params)}
  out = {'model.embed_tokens.weight': p['embedder/input_embedding'],
         'model.norm.weight': p['final_norm/scale']}
  heads_to_linear = lambda w, heads: w.transpose(0, 2, 1).reshape(heads * h, d)
  for i in range(config.num_layers):
    hf, ours = f'model.layers.{i}.', f'layer_{i}/'
    if config.use_qkv_einsum:
      q, kk, v = p[ours + 'attn/qkv_einsum/w']
    else:
      q = p[ours + 'attn/q_einsum/w']
      kk, v = p[ours + 'attn/kv_einsum/w']
    out[hf + 'self_attn.q_proj.weight'] = heads_to_linear(q, n)
    out[hf + 'self_attn.k_proj.weight'] = heads_to_linear(kk, k)
    out[hf + 'self_attn.v_proj.weight'] = heads_to_linear(v, k)
    out[hf + 'self_attn.o_proj.weight'] = (
        p[ours + 'attn/attn_vec_einsum/w'].reshape(n * h, d).T)
    if config.use_qk_norm:
      out[hf + 'self_attn.q_norm.weight'] = p[ours + 'attn/_query_norm/scale']
      out[hf + 'self_attn.k_norm.weight'] = p[ours + 'attn/_key_norm/scale']
    out[hf + 'input_layernorm.weight'] = p[ours + 'pre_attention_norm/scale']
    if family == 'gemma':
      out[hf + 'post_attention_layernorm.weight'] = p[ours + 'pre_ffw_norm/scale']
    else:
      out[hf + 'pre_feedforward_layernorm.weight'] = p[ours + 'pre_ffw_norm/scale']
      out[hf + 'post_attention_layernorm.weight'] = (
          p[ours + 'post_attention_norm/scale'])
      out[hf + 'post_feedforward_layernorm.weight'] = (
          p[ours + 'post_ffw_norm/scale'])
    gate, up = p[ours + 'mlp/gating_einsum']
    if not config.transpose_gating_einsum:
      gate, up = gate.T, up.T
    out[hf + 'mlp.gate_proj.weight'] = gate
    out[hf + 'mlp.up_proj.weight'] = up
    out[hf + 'mlp.down_proj.weight'] = p[ours + 'mlp/linear'].T
  return {name: np.ascontiguousarray(v) for name, v in out.items()}


def logits(config, params):
  """Logits of a causal forward pass over 8 tokens."""
  tokens = helpers.tokens_for(config, 1, 8, seed=4)
  positions = np.arange(8, dtype=np.int32)[None]
  meta = helpers.causal(1, 8)
  return helpers.forward(config, params, tokens, positions, (meta, meta))


def assert_same_params(a, b):
  """The same tree, with equal values in float32."""
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(
      np.asarray(x, np.float32), np.asarray(y, np.float32)), a, b)


def bf16_exact(params):
  """float32 params whose values are exactly representable in bfloat16."""
  return jax.tree.map(
      lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32),
      params)


def write_hf_checkpoint(directory, tensors, hf_config, shards=1):
  """config.json + model.safetensors, or `shards` files with an index."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'config.json'), 'w') as f:
    json.dump(hf_config, f)
  names = sorted(tensors)
  if shards == 1:
    save_file(tensors, os.path.join(directory, 'model.safetensors'),
              metadata={'format': 'pt'})
    return
  weight_map = {}
  for s in range(shards):
    filename = f'model-{s + 1:05d}-of-{shards:05d}.safetensors'
    part = {n: tensors[n] for n in names[s::shards]}
    save_file(part, os.path.join(directory, filename), metadata={'format': 'pt'})
    weight_map.update({n: filename for n in part})
  with open(os.path.join(directory, 'model.safetensors.index.json'), 'w') as f:
    json.dump({'metadata': {}, 'weight_map': weight_map}, f)


def hf_config(config, family, spelling='4.x', dtype='float32'):
  """A Hugging Face config.json dict describing `config`."""
  c = {
      'model_type': family, 'vocab_size': config.vocab_size,
      'hidden_size': config.embed_dim, 'intermediate_size': config.hidden_dim,
      'num_hidden_layers': config.num_layers,
      'num_attention_heads': config.num_heads,
      'num_key_value_heads': config.num_kv_heads, 'head_dim': config.head_dim,
      'rms_norm_eps': 1e-6, 'torch_dtype': dtype,
      'hidden_activation': 'gelu_pytorch_tanh',
  }
  types = ['sliding_attention' if t == AttentionType.LOCAL_SLIDING else
           'full_attention' for t in config.attention_types]
  if family == 'gemma':
    c.update(hidden_act='gelu', hidden_activation=None,
             rope_theta=config.global_rope_base)
    return c
  c.update(query_pre_attn_scalar=config.query_pre_attn_scalar or config.head_dim,
           sliding_window=config.sliding_window_size,
           attn_logit_softcapping=config.attn_logits_soft_cap,
           final_logit_softcapping=config.final_logit_softcap)
  if family == 'gemma2':
    if spelling == '4.x':
      c.update(rope_theta=config.global_rope_base)
    else:
      c.update(layer_types=types,
               rope_parameters={'rope_type': 'default',
                                'rope_theta': config.global_rope_base})
    return c
  # gemma3_text
  factor = config.global_rope_scale_factor
  if spelling == '4.x':
    period = len(config.attention_pattern)
    c.update(rope_theta=config.global_rope_base,
             rope_local_base_freq=config.local_rope_base,
             sliding_window_pattern=period,
             rope_scaling=({'rope_type': 'linear', 'factor': factor}
                           if factor != 1.0 else None))
  else:
    full = {'rope_type': 'default', 'rope_theta': config.global_rope_base}
    if factor != 1.0:
      full.update(rope_type='linear', factor=factor)
    c.update(layer_types=types, rope_parameters={
        'full_attention': full,
        'sliding_attention': {'rope_type': 'default',
                              'rope_theta': config.local_rope_base}})
  return c
