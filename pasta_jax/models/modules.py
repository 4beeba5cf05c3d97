"""Transformer sub-modules: embedder, attention with a scatter-written KV cache, MLP, block.

Module and parameter names follow the official Gemma Flax checkpoints exactly.
Shape letters: B batch, T new tokens, S keys (= T without a cache, the cache
length with one), D embed, N query heads, K kv heads, G = N / K query heads per
kv head, H head_dim, F mlp hidden, V vocab.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from pasta_jax.models import layers
from pasta_jax.models import cache as cache_lib
from pasta_jax.models.cache import LayerCache, write_layer
from pasta_jax.models.config import AttentionType, TransformerConfig

# Score of a masked (query, key) pair. Large and finite, never -inf: a query
# row that sees no key at all (padding, an idle interpreter slot) then gets a
# uniform softmax and finite outputs instead of NaN.
K_MASK = -2.3819763e38


class Embedder(nn.Module):
  """Input embedding scaled by sqrt(D); the same table gives the logits.

  `layouts` may store the table transposed ([D, V], `layers.Layouts`): the
  logits' product then reads it as x @ W.
  """

  config: TransformerConfig
  layouts: layers.Layouts = ()

  def setup(self):
    cfg = self.config
    self.perm = layers.layout_of(self.layouts, 'input_embedding')
    if self.perm not in (None, (0, 1), (1, 0)):
      raise ValueError(f'input_embedding: no layout {self.perm}')
    axes, shape = ('vocab', 'embed'), (cfg.vocab_size, cfg.embed_dim)
    order = self.perm or (0, 1)
    # Std 1/sqrt(D): scaled inputs then have unit entries and, through the
    # tied output, unit-variance logits at init.
    self.input_embedding = self.param(
        'input_embedding',
        nn.with_logical_partitioning(
            layers.permuted_init(nn.initializers.normal(stddev=cfg.embed_dim ** -0.5),
                                 self.perm),
            tuple(axes[i] for i in order)),
        tuple(shape[i] for i in order), jnp.dtype(cfg.param_dtype))

  @property
  def _transposed(self) -> bool:
    return self.perm == (1, 0)

  def encode(self, tokens_BT: jax.Array) -> jax.Array:
    """[B, T] ids in [0, vocab_size) -> [B, T, D] in the activation dtype."""
    dtype = jnp.dtype(self.config.dtype)
    if self._transposed:
      x_BTD = jnp.moveaxis(self.input_embedding[:, tokens_BT], 0, -1).astype(dtype)
    else:
      x_BTD = self.input_embedding[tokens_BT].astype(dtype)
    # The sqrt(D) factor is rounded to the activation dtype first, as in Gemma.
    return x_BTD * jnp.sqrt(self.config.embed_dim).astype(dtype)

  def decode(self, x_BTD: jax.Array) -> jax.Array:
    """Logits [B, T, V] in float32 (accumulated in float32)."""
    table = self.input_embedding.astype(self.config.dtype)
    return jnp.einsum('BTD,DV->BTV' if self._transposed else 'BTD,VD->BTV', x_BTD, table,
                      preferred_element_type=jnp.float32)


class Attention(nn.Module):
  """Multi-head attention (MHA / MQA / GQA) with RoPE, optional QK-norm,
  soft-cap and sliding window, over the new tokens or over a whole KV cache."""

  config: TransformerConfig
  attn_type: AttentionType
  layouts: layers.Layouts = ()

  @nn.compact
  def __call__(self, x_BTD, positions_BT, mask_BTS, cache: LayerCache | None,
               cache_index_BT, write_cache: bool = True):
    cfg = self.config
    n, k, h, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.embed_dim
    einsum = lambda shape, axes, init, name: layers.Einsum(
        shape, axes, init, cfg.dtype, cfg.param_dtype,
        perm=layers.layout_of(self.layouts, name), name=name)

    # The stacked projections put their stacking axis C after the tokens: with
    # the weight stored [D, C, ...] (the decode loop's layout, interpreter/
    # layouts.py) the product is then x @ W as stored, with no copy of W.
    if cfg.use_qkv_einsum:
      qkv_BTCNH = einsum((3, n, d, h), (None, 'heads', 'embed', 'head_dim'),
                         layers.fan_in_init(2, (1, 3), 0), 'qkv_einsum')(
                             'BTD,CNDH->BTCNH', x_BTD)
      q_BTNH, k_BTKH, v_BTKH = (qkv_BTCNH[:, :, i] for i in range(3))
    else:
      q_BTNH = einsum((n, d, h), ('heads', 'embed', 'head_dim'),
                      layers.fan_in_init(1, (0, 2)), 'q_einsum')(
                          'BTD,NDH->BTNH', x_BTD)
      kv_BTCKH = einsum(
          (2, k, d, h), (None, 'kv_heads', 'embed', 'head_dim'),
          layers.fan_in_init(2, (1, 3), 0), 'kv_einsum')('BTD,CKDH->BTCKH', x_BTD)
      k_BTKH, v_BTKH = kv_BTCKH[:, :, 0], kv_BTCKH[:, :, 1]

    if cfg.use_qk_norm:
      q_BTNH = layers.RMSNorm('head_dim', cfg.param_dtype,
                              name='_query_norm')(q_BTNH)
      k_BTKH = layers.RMSNorm('head_dim', cfg.param_dtype,
                              name='_key_norm')(k_BTKH)

    base, scale = cfg.rope(self.attn_type)
    q_BTNH = layers.apply_rope(q_BTNH, positions_BT, base_frequency=base,
                               scale_factor=scale)
    k_BTKH = layers.apply_rope(k_BTKH, positions_BT, base_frequency=base,
                               scale_factor=scale)
    q_BTNH = q_BTNH * jnp.asarray(cfg.query_scale, q_BTNH.dtype)
    q_BTNH = layers.constrain(q_BTNH, ('batch', 'length', 'heads', 'kv'))
    k_BTKH = layers.constrain(k_BTKH, ('batch', 'length', 'kv_heads', 'kv'))
    v_BTKH = layers.constrain(v_BTKH, ('batch', 'length', 'kv_heads', 'kv'))

    # The new tokens' entries in the cache layout: keys [B, K, H, T], values
    # [B, K, T, H] (cache.py), the layouts the two products below read.
    new = cache_lib.entries(k_BTKH, v_BTKH, positions_BT)
    if cache is None:
      new_cache = None
      k_parts, v_parts, key_positions_BS = (new.k,), (new.v,), positions_BT
    else:
      # The keys are the S cached entries as they are, then the T new tokens
      # (key axis S + T, as the mask's): attention reads the cache as it came
      # in and never a written copy of it. Read-only (`write_cache=False`), the
      # new entries go back to the caller (cache.write_entries); otherwise they
      # are written at `cache_index_BT` below, after the reads (the model split
      # the caller's mask of the written cache: `transformer.split_written`).
      # Attending to the written cache instead would make XLA:CPU copy the
      # whole cache every step to keep its write in place (docs/benchmarks.md).
      new_cache = new
      k_parts = (cache.k.astype(cfg.dtype), new.k)
      v_parts = (cache.v.astype(cfg.dtype), new.v)
      key_positions_BS = jnp.concatenate([cache.positions, positions_BT], axis=1)

    if self.attn_type == AttentionType.LOCAL_SLIDING:
      # The window compares stored positions, not cache offsets: query at
      # position i sees key at j only if i - W < j. Keys at positions after
      # the query are not excluded here (PASTA positions may overlap when a
      # body outgrows its reservation); the visibility mask decides them.
      window_BTS = (positions_BT[:, :, None] - key_positions_BS[:, None, :]
                    < cfg.sliding_window_size)
      mask_BTS = mask_BTS & window_BTS

    b, t = q_BTNH.shape[:2]
    q_BTKGH = q_BTNH.reshape(b, t, k, n // k, h)
    # Query head index = kv head * G + group member (as Gemma and HF order them).
    # Keys in one array, or in parts (read-only cache, then the new tokens) whose
    # logits are joined before the softmax: the cache itself is never copied.
    # Logits in the natural layout of the batched product (batch B, kv head K,
    # then queries, then keys): no transposes around the softmax.
    logits_BKTGS = jnp.concatenate(
        [jnp.einsum('BTKGH,BKHS->BKTGS', q_BTKGH, part,
                    preferred_element_type=jnp.float32) for part in k_parts], axis=-1)
    # Soft-cap first, then mask (Gemma 2 order).
    logits_BKTGS = layers.soft_cap(logits_BKTGS, cfg.attn_logits_soft_cap)
    logits_BKTGS = jnp.where(mask_BTS[:, None, :, None, :], logits_BKTGS, K_MASK)
    probs_BKTGS = jax.nn.softmax(logits_BKTGS, axis=-1).astype(v_parts[0].dtype)
    encoded_BKTGH, start = 0, 0
    for part in v_parts:
      size = part.shape[2]
      encoded_BKTGH += jnp.einsum('BKTGS,BKSH->BKTGH',
                                  probs_BKTGS[..., start:start + size], part)
      start += size
    encoded_BTKGH = encoded_BKTGH.transpose(0, 2, 1, 3, 4)
    encoded_BTNH = layers.constrain(encoded_BTKGH.reshape(b, t, n, h),
                                    ('batch', 'length', 'heads', 'kv'))
    out_BTD = einsum((n, h, d), ('heads', 'head_dim', 'embed'),
                     layers.fan_in_init((0, 1), 2), 'attn_vec_einsum')(
                         'BTNH,NHD->BTD', encoded_BTNH)
    if cache is not None and write_cache:
      # The writes come after every read of the cache: their indices wait for
      # this layer's attention output (cache.after_reads).
      index_BT = cache_lib.after_reads(cache_index_BT, cache.positions.shape[1], out_BTD)
      new_cache = write_layer(cache, index_BT, new)
    return out_BTD, new_cache


class FeedForward(nn.Module):
  """GeGLU MLP: linear(gelu_tanh(x W_gate) * (x W_up)).

  Params `gating_einsum` (2, D, F), or (2, F, D) with transpose_gating_einsum,
  index 0 = gate; `linear` (F, D). No `w` level, as in the Gemma checkpoints.
  """

  config: TransformerConfig
  layouts: layers.Layouts = ()

  @nn.compact
  def __call__(self, x_BTD):
    cfg = self.config
    d, f = cfg.embed_dim, cfg.hidden_dim
    if cfg.transpose_gating_einsum:
      shape, axes, eqn = (2, f, d), (None, 'mlp', 'embed'), 'BTD,CFD->CBTF'
      init = layers.fan_in_init(2, 1, 0)
    else:
      shape, axes, eqn = (2, d, f), (None, 'embed', 'mlp'), 'BTD,CDF->CBTF'
      init = layers.fan_in_init(1, 2, 0)
    # Stored permuted when `layouts` says so (layers.Layouts): the equation's
    # weight letters follow.
    perm = layers.layout_of(self.layouts, 'gating_einsum') or (0, 1, 2)
    eqn = layers.permute_weight_letters(eqn, perm)
    gating = self.param('gating_einsum', nn.with_logical_partitioning(
        layers.permuted_init(init, perm), tuple(axes[i] for i in perm)),
                        tuple(shape[i] for i in perm), jnp.dtype(cfg.param_dtype))
    gating = gating.astype(cfg.dtype)
    if x_BTD.shape[1] == 1 and eqn.split(',')[1].startswith('CF'):
      # One token (decoding) and the weight stored [2, F, D]: one matrix-vector
      # product W x over both halves, reading W as stored.
      gate_BTF, up_BTF = jnp.einsum(eqn, x_BTD, gating)
    else:
      # A product batched over (gate, up), x broadcast: the same arithmetic, but
      # XLA:CPU then runs two F-wide products x W[c], several times faster at
      # decode widths (T = 2..8) than one 2F-wide product, and with the weight
      # stored [2, D, F] it reads W as stored at every width (one 2F-wide
      # product copied the whole weight into [2F, D] on every decode step).
      gate_BTF, up_BTF = jnp.einsum('C' + eqn, jnp.broadcast_to(x_BTD, (2, *x_BTD.shape)),
                                    gating)
    hidden_BTF = nn.gelu(gate_BTF, approximate=True) * up_BTF
    hidden_BTF = layers.constrain(hidden_BTF, ('batch', 'length', 'mlp'))
    linear = self.param(
        'linear',
        nn.with_logical_partitioning(layers.fan_in_init(0, 1), ('mlp', 'embed')),
        (f, d), jnp.dtype(cfg.param_dtype))
    return jnp.einsum('BTF,FD->BTD', hidden_BTF, linear.astype(cfg.dtype))


class Block(nn.Module):
  """Pre-norm transformer block, with Gemma 2/3 post norms when configured."""

  config: TransformerConfig
  attn_type: AttentionType
  layouts: layers.Layouts = ()

  @nn.compact
  def __call__(self, x_BTD, positions_BT, mask_BTS, cache: LayerCache | None,
               cache_index_BT, write_cache: bool = True):
    cfg = self.config
    norm = lambda name: layers.RMSNorm('embed', cfg.param_dtype, name=name)
    attn_BTD, new_cache = Attention(cfg, self.attn_type, self.layouts, name='attn')(
        norm('pre_attention_norm')(x_BTD), positions_BT, mask_BTS, cache,
        cache_index_BT, write_cache)
    if cfg.use_post_attn_norm:
      attn_BTD = norm('post_attention_norm')(attn_BTD)
    x_BTD = x_BTD + attn_BTD
    ffw_BTD = FeedForward(cfg, self.layouts, name='mlp')(norm('pre_ffw_norm')(x_BTD))
    if cfg.use_post_ffw_norm:
      ffw_BTD = norm('post_ffw_norm')(ffw_BTD)
    x_BTD = layers.constrain(x_BTD + ffw_BTD, ('batch', 'length', 'embed'))
    return x_BTD, new_cache
