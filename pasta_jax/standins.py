"""Tiny stand-ins for a Gemma release, for runs without the real files: a
sentencepiece model with Gemma's conventions (reserved `<unusedN>` pieces) and a
random checkpoint in the Hugging Face layout (config.json + safetensors).

They take the place of Gemma's `tokenizer.model` and of a Hugging Face checkpoint
directory in notebooks/finetune_gemma.ipynb and in the tests, so that the real path
(`Tokenizer.from_pretrained`, `models.hf.load_hf_checkpoint`,
scripts/convert_hf_checkpoint.py) runs unchanged on a CPU in seconds. The
checkpoint writer is the inverse of the loader's transforms, written out from the
layouts in docs/models.md rather than derived from the loader, so a test of one
checks the other.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any, Iterable, Mapping

import jax
import numpy as np

from pasta_jax.models import checkpoint
from pasta_jax.models import transformer
from pasta_jax.models.config import AttentionType, TransformerConfig

# Gemma 1 and 2 reserve <unused0>..<unused98>; the stand-in keeps 60, enough for
# the control tokens of max_promise_tokens=500 (4 tags + 51 lengths).
GEMMA_SPECIAL = ('<start_of_turn>', '<end_of_turn>')
HF_FAMILIES = ('gemma', 'gemma2', 'gemma3_text')


def gemma_style_tokenizer(path: str | os.PathLike, texts: Iterable[str], *,
                          vocab_size: int = 600, reserved: int = 60,
                          add_dummy_prefix: bool = False, normalization: str = 'identity',
                          byte_fallback: bool = True) -> str:
  """Trains a small sentencepiece BPE model on `texts` with Gemma's conventions:
  `<unused0>`.. `<unused{reserved-1}>` and the chat-turn markers as USER_DEFINED
  pieces, pad/eos/bos/unk at ids 0-3, byte fallback, digits split, whitespace kept.
  Writes it to `path` and returns the path (as str)."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  writer = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(list(texts)), model_writer=writer, vocab_size=vocab_size,
      model_type='bpe',
      user_defined_symbols=[f'<unused{i}>' for i in range(reserved)] + list(GEMMA_SPECIAL),
      byte_fallback=byte_fallback, normalization_rule_name=normalization,
      remove_extra_whitespaces=False, add_dummy_prefix=add_dummy_prefix, split_digits=True,
      allow_whitespace_only_pieces=True, character_coverage=1.0, pad_id=0, eos_id=1,
      bos_id=2, unk_id=3, pad_piece='<pad>', eos_piece='<eos>', bos_piece='<bos>',
      unk_piece='<unk>', num_threads=1, hard_vocab_limit=False, minloglevel=2)
  with open(path, 'wb') as f:
    f.write(writer.getvalue())
  return os.fspath(path)


def hf_state_dict(params: Mapping[str, Any], config: TransformerConfig,
                  family: str) -> dict[str, np.ndarray]:
  """The model's params under Hugging Face tensor names and layouts (linear weights
  (out, in); Gemma 1's post-attention norm is the pre-FFW norm)."""
  n, k, h = config.num_heads, config.num_kv_heads, config.head_dim
  d = config.embed_dim
  p = {name: np.asarray(v) for name, v in checkpoint.flatten(params).items()}
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


def hf_config(config: TransformerConfig, family: str, spelling: str = '4.x',
              dtype: str = 'float32') -> dict[str, Any]:
  """A Hugging Face config.json describing `config` (family 'gemma', 'gemma2' or
  'gemma3_text'; `spelling` '4.x' or '5.x', the transformers releases' two ways of
  writing RoPE and layer types)."""
  if family not in HF_FAMILIES:
    raise ValueError(f'family {family!r}: expected one of {HF_FAMILIES}')
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


def write_hf_checkpoint(directory: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                        config_json: Mapping[str, Any], shards: int = 1) -> str:
  """config.json + model.safetensors, or `shards` files with their index (tensors
  dealt round-robin in name order), in `directory`; returns it (as str)."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  directory = os.fspath(directory)
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'config.json'), 'w') as f:
    json.dump(dict(config_json), f)
  names = sorted(tensors)
  if shards == 1:
    save_file(dict(tensors), os.path.join(directory, 'model.safetensors'),
              metadata={'format': 'pt'})
    return directory
  weight_map = {}
  for s in range(shards):
    filename = f'model-{s + 1:05d}-of-{shards:05d}.safetensors'
    part = {n: tensors[n] for n in names[s::shards]}
    save_file(part, os.path.join(directory, filename), metadata={'format': 'pt'})
    weight_map.update({n: filename for n in part})
  with open(os.path.join(directory, 'model.safetensors.index.json'), 'w') as f:
    json.dump({'metadata': {}, 'weight_map': weight_map}, f)
  return directory


def random_hf_checkpoint(directory: str | os.PathLike, config: TransformerConfig, *,
                         family: str = 'gemma3_text', seed: int = 0) -> str:
  """A checkpoint of randomly initialised params of `config` in the Hugging Face
  layout of `family` (float32); returns the directory. The CPU presets (`tiny`,
  `small`, `base100m`) are Gemma 3 style: family 'gemma3_text'."""
  params = transformer.init_params(config, jax.random.key(seed))
  return write_hf_checkpoint(directory, hf_state_dict(params, config, family),
                             hf_config(config, family))
