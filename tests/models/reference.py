"""An independent float64 numpy forward pass of the Gemma-family decoder.

Written from the numerics listed in docs/models.md, not from the model
code: complex-number RoPE, kv heads repeated to N heads, masked softmax with an
explicit fill. It reads the same nested param tree and TransformerConfig.
"""

import numpy as np

from pasta_jax.models.config import AttentionType


def _f64(tree):
  if isinstance(tree, dict):
    return {k: _f64(v) for k, v in tree.items()}
  return np.asarray(tree, np.float64)


def rms_norm(x, scale):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6) * (1 + scale)


def rope(x, positions, base, scale):
  """x [B, T, N, H]: pair (x[i], x[i + H/2]) rotated by angle p / scale * base^(-2i/H)."""
  half = x.shape[-1] // 2
  inv_freq = base ** (-np.arange(half) * 2.0 / x.shape[-1])
  angle = (positions[:, :, None] / scale) * inv_freq  # [B, T, H/2]
  z = (x[..., :half] + 1j * x[..., half:]) * np.exp(1j * angle)[:, :, None, :]
  return np.concatenate([z.real, z.imag], axis=-1)


def gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def cap(x, c):
  return x if c is None else c * np.tanh(x / c)


def forward(params, config, tokens, positions, mask):
  """Logits [B, T, V] for tokens [B, T], positions [B, T], mask [B, T, T] bool."""
  p = _f64(params)
  positions = np.asarray(positions, np.float64)
  mask = np.asarray(mask, bool)
  table = p['embedder']['input_embedding']
  d = config.embed_dim
  x = table[np.asarray(tokens)] * np.sqrt(d)
  groups = config.num_heads // config.num_kv_heads
  scalar = config.query_pre_attn_scalar or config.head_dim
  for i in range(config.num_layers):
    lp = p[f'layer_{i}']
    attn_p = lp['attn']
    kind = config.attention_pattern[i % len(config.attention_pattern)]
    h = rms_norm(x, lp['pre_attention_norm']['scale'])
    if 'qkv_einsum' in attn_p:
      wq, wk, wv = attn_p['qkv_einsum']['w']
    else:
      wq = attn_p['q_einsum']['w']
      wk, wv = attn_p['kv_einsum']['w']
    q = np.einsum('btd,ndh->btnh', h, wq)
    k = np.einsum('btd,kdh->btkh', h, wk)
    v = np.einsum('btd,kdh->btkh', h, wv)
    if config.use_qk_norm:
      q = rms_norm(q, attn_p['_query_norm']['scale'])
      k = rms_norm(k, attn_p['_key_norm']['scale'])
    if kind == AttentionType.LOCAL_SLIDING:
      base, scale = config.local_rope_base, 1.0
    else:
      base, scale = config.global_rope_base, config.global_rope_scale_factor
    q = rope(q, positions, base, scale) / np.sqrt(scalar)
    k = rope(k, positions, base, scale)
    k = np.repeat(k, groups, axis=2)  # query head n reads kv head n // groups
    v = np.repeat(v, groups, axis=2)
    scores = cap(np.einsum('btnh,bsnh->bnts', q, k), config.attn_logits_soft_cap)
    visible = mask.copy()
    if kind == AttentionType.LOCAL_SLIDING:
      distance = positions[:, :, None] - positions[:, None, :]
      visible &= distance < config.sliding_window_size
    scores = np.where(visible[:, None], scores, -1e300)
    scores = scores - scores.max(-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum('bnts,bsnh->btnh', weights, v)
    out = np.einsum('btnh,nhd->btd', out, attn_p['attn_vec_einsum']['w'])
    if config.use_post_attn_norm:
      out = rms_norm(out, lp['post_attention_norm']['scale'])
    x = x + out
    h = rms_norm(x, lp['pre_ffw_norm']['scale'])
    gating = lp['mlp']['gating_einsum']
    if config.transpose_gating_einsum:
      gate, up = (np.einsum('btd,fd->btf', h, g) for g in gating)
    else:
      gate, up = (np.einsum('btd,df->btf', h, g) for g in gating)
    out = (gelu_tanh(gate) * up) @ lp['mlp']['linear']
    if config.use_post_ffw_norm:
      out = rms_norm(out, lp['post_ffw_norm']['scale'])
    x = x + out
  x = rms_norm(x, p['final_norm']['scale'])
  return cap(x @ table.T, config.final_logit_softcap)
