"""Shared fixtures of the model tests: tiny configs, params, metadata, a decode loop."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from pasta_jax import masks
from pasta_jax.models import cache as cache_lib
from pasta_jax.models import transformer
from pasta_jax.models.config import (GEMMA2_PATTERN, GLOBAL, LOCAL,
                                     TransformerConfig)


def tiny(**kw) -> TransformerConfig:
  base = dict(num_layers=2, vocab_size=64, embed_dim=32, hidden_dim=48,
              num_heads=4, head_dim=8, num_kv_heads=2)
  return TransformerConfig(**{**base, **kw})


# One tiny config per architecture family (float32).
CONFIGS = {
    'gemma1_mha': tiny(num_kv_heads=4),  # qkv_einsum
    'gemma1_mqa': tiny(num_kv_heads=1),
    'gemma2': tiny(
        attention_pattern=GEMMA2_PATTERN, sliding_window_size=3,
        attn_logits_soft_cap=1.0, final_logit_softcap=1.5,
        query_pre_attn_scalar=20.0, use_post_attn_norm=True,
        use_post_ffw_norm=True),
    'gemma2_transposed': tiny(
        attention_pattern=GEMMA2_PATTERN, sliding_window_size=3,
        attn_logits_soft_cap=1.0, final_logit_softcap=1.5,
        use_post_attn_norm=True, use_post_ffw_norm=True,
        transpose_gating_einsum=True),
    'gemma3': tiny(
        num_layers=3, attention_pattern=(LOCAL, LOCAL, GLOBAL),
        sliding_window_size=3, use_qk_norm=True, use_post_attn_norm=True,
        use_post_ffw_norm=True, transpose_gating_einsum=True,
        local_rope_base=10_000.0, global_rope_base=1_000_000.0,
        global_rope_scale_factor=8.0),
}


@functools.lru_cache(maxsize=None)
def _params(config: TransformerConfig, seed: int):
  params = transformer.init_params(config, jax.random.key(seed))
  rng = np.random.default_rng(seed)

  def randomize(path, x):
    # Non-zero norm scales, so that a norm applied or skipped shows.
    if path[-1].key == 'scale':
      return jnp.asarray(rng.normal(0.0, 0.5, x.shape), x.dtype)
    return x
  return jax.tree_util.tree_map_with_path(randomize, params)


def params_for(config: TransformerConfig, seed: int = 0):
  """Random params with random (non-zero) norm scales."""
  return _params(config, seed)


def batch_meta(meta: masks.AttentionMeta, batch: int) -> masks.AttentionMeta:
  return masks.AttentionMeta(*(np.broadcast_to(np.asarray(a, np.int32),
                                               (batch, len(a))).copy()
                               for a in meta))


def causal(batch: int, length: int) -> masks.AttentionMeta:
  return batch_meta(masks.causal_meta(length), batch)


def tokens_for(config, batch, length, seed=0):
  return np.random.default_rng(seed).integers(
      0, config.vocab_size, (batch, length)).astype(np.int32)


def pasta_example():
  """A hand-made PASTA sequence in training order, and a decode schedule.

  Prompt 0-2, promise 1 at 3 (body 4-6: thread 1), promise 2 at 7 (body 8-9:
  thread 2), main 10-11, sync 12 (joins both), main 13. Reserved lengths make
  positions jump: main after promise 1 continues at 7, after promise 2 at 10.
  Returns (meta [14], positions [14], steps): each step lists the token indices
  decoded together (-1 = an idle slot), after a prefill of 0-3.
  """
  rows = [  # thread, anchor, visible_from, position
      (0, 0, 0, 0), (0, 1, 1, 1), (0, 2, 2, 2), (0, 3, 3, 3),
      (1, 3, 12, 4), (1, 3, 12, 5), (1, 3, 12, 6),
      (0, 7, 7, 7),
      (2, 7, 12, 8), (2, 7, 12, 9),
      (0, 10, 10, 10), (0, 11, 11, 11), (0, 12, 12, 12), (0, 13, 13, 13),
  ]
  thread, anchor, visible_from, positions = (np.array(c, np.int32)
                                             for c in zip(*rows))
  n = len(rows)
  meta = masks.AttentionMeta(thread=thread, anchor=anchor,
                             visible_from=visible_from,
                             order=np.arange(n, dtype=np.int32),
                             segment=np.ones(n, np.int32))
  steps = [[0, 1, 2, 3], [7, 4, -1], [10, 5, 8], [11, 6, 9], [12, -1, -1],
           [13, -1, -1]]
  return meta, positions, steps


@functools.lru_cache(maxsize=None)
def jitted_apply(config):
  model = transformer.Transformer(config)
  return jax.jit(lambda params, tokens, positions, attention, cache, index:
                 model.apply({'params': params}, tokens, positions, attention,
                             cache, index))


def forward(config, params, tokens, positions, attention):
  logits, _ = jitted_apply(config)(params, tokens, positions, attention, None,
                                   None)
  return np.asarray(logits)


def read_only_apply(config):
  """Like `jitted_apply`, but the cache is only read (`write_cache=False`) and the
  new entries are written after the call, as the interpreter's switch does."""
  model = transformer.Transformer(config)

  def apply(params, tokens, positions, attention, cache, index):
    logits, entries = model.apply({'params': params}, tokens, positions, attention,
                                  cache, write_cache=False)
    return logits, cache_lib.write_entries(cache, entries, index)
  return jax.jit(apply)


def decode(config, params, tokens, positions, meta, steps, slots, cache_length,
           cache_dtype=jnp.float32, read_only=False):
  """Decodes `tokens` [B, L] step by step through the cache.

  steps: list of index arrays [B, T_step] (token indices, -1 = idle slot);
  slots: [B, L] cache entry of each token. The key metadata of the cache is
  kept beside it (segment 0 = empty), as an interpreter would.
  read_only: call the model with `write_cache=False` (keys: the cache before the
  step, then the step's tokens) and write the returned entries afterwards.
  Returns the logits [B, L, V] of every decoded token (NaN where never decoded).
  """
  apply = (read_only_apply if read_only else jitted_apply)(config)
  b, length = tokens.shape
  cache = cache_lib.init_cache(config, b, cache_length, cache_dtype)
  key_meta = masks.AttentionMeta(*(np.zeros((b, cache_length), np.int32)
                                   for _ in masks.AttentionMeta._fields))
  out = np.full((b, length, config.vocab_size), np.nan, np.float32)
  for step in steps:
    step = np.asarray(step, np.int32)
    if step.ndim == 1:
      step = np.broadcast_to(step, (b, len(step)))
    idle = step < 0
    j = np.where(idle, 0, step)
    query_meta = masks.AttentionMeta(*(np.where(
        idle, 0, np.take_along_axis(np.asarray(f), j, 1)) for f in meta))
    # Idle slots write to index cache_length: dropped by the model.
    index = np.where(idle, cache_length, np.take_along_axis(slots, j, 1))
    # Keys of a read-only call: the cache as it is, then the step's tokens (idle
    # slots in segment 0); of a writing call: the cache after the writes.
    step_keys = masks.AttentionMeta(*(np.where(idle, 0, f) for f in query_meta))
    keys_before = masks.AttentionMeta(*(np.concatenate([k, q], axis=1)
                                        for k, q in zip(key_meta, step_keys)))
    for f_key, f_query in zip(key_meta, query_meta):
      rr, cc = np.nonzero(~idle)
      f_key[rr, index[rr, cc]] = f_query[rr, cc]
    logits, cache = apply(params, np.take_along_axis(tokens, j, 1),
                          np.take_along_axis(positions, j, 1),
                          (query_meta, keys_before if read_only else key_meta), cache,
                          index)
    logits = np.asarray(logits)
    rr, cc = np.nonzero(~idle)
    out[rr, step[rr, cc]] = logits[rr, cc]
  return out
