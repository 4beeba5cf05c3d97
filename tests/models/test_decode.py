"""Cached decoding equals the full forward pass, wherever the cache entries go."""

import jax
import numpy as np
import pytest

from pasta_jax.models import cache as cache_lib
from pasta_jax.models import transformer
from tests.models import helpers

B, L, S = 2, 10, 16


def _slots(seed):
  """Row 0: a random injective map of the tokens into the cache (gaps and
  permutation); row 1: the tokens written backwards from the end."""
  rng = np.random.default_rng(seed)
  row0 = rng.permutation(S)[:L]
  row1 = S - 1 - np.arange(L)
  return np.stack([row0, row1]).astype(np.int32)


@pytest.mark.parametrize('name', ['gemma1_mha', 'gemma2', 'gemma3'])
def test_token_by_token_decode_matches_forward(name):
  config = helpers.CONFIGS[name]
  params = helpers.params_for(config)
  tokens = helpers.tokens_for(config, B, L, seed=1)
  positions = np.array([np.arange(L), np.arange(L) + 3], np.int32)
  meta = helpers.causal(B, L)
  full = helpers.forward(config, params, tokens, positions, (meta, meta))
  # Prefill 4 tokens in one call, then one token per call.
  steps = [np.arange(4)] + [[t] for t in range(4, L)]
  decoded = helpers.decode(config, params, tokens, positions, meta, steps,
                           _slots(0), S)
  np.testing.assert_allclose(decoded, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('read_only', [False, True], ids=['write', 'read_only'])
def test_interleaved_threads_decode_matches_training_forward(read_only):
  """Several threads per step at interleaved cache entries, idle slots
  dropped, windows from stored positions: the logits of the training layout.
  read_only: the model only reads the cache (keys = cache + the step's tokens)
  and the entries are written after each call (the interpreter's switch)."""
  config = helpers.CONFIGS['gemma3']  # sliding windows of 3 positions
  params = helpers.params_for(config)
  meta1, positions1, steps = helpers.pasta_example()
  n = len(positions1)
  meta = helpers.batch_meta(meta1, B)
  positions = np.broadcast_to(positions1, (B, n)).copy()
  tokens = helpers.tokens_for(config, B, n, seed=2)
  full = helpers.forward(config, params, tokens, positions, (meta, meta))
  # Cache entries in generation order (row 0) and in reverse with an offset
  # (row 1); the step width is fixed at 3 after the prefill.
  order = [t for step in steps for t in step if t >= 0]
  slots = np.zeros((B, n), np.int32)
  slots[0, order] = np.arange(n)
  slots[1, order] = 17 - np.arange(n)
  decoded = helpers.decode(config, params, tokens, positions, meta, steps,
                           slots, cache_length=18, read_only=read_only)
  np.testing.assert_allclose(decoded, full, rtol=1e-5, atol=1e-5)


def test_cache_writes_scatter_and_drop():
  config = helpers.CONFIGS['gemma1_mqa']
  params = helpers.params_for(config)
  cache = cache_lib.init_cache(config, 1, 6, np.float32)
  tokens = np.array([[5, 6, 7]], np.int32)
  positions = np.array([[10, 11, 12]], np.int32)
  index = np.array([[4, 6, -1]], np.int32)  # 6 and -1 are outside [0, 6)
  mask = np.ones((1, 3, 6), bool)
  _, new = helpers.jitted_apply(config)(params, tokens, positions, mask, cache,
                                        index)
  layer = new['layer_0']
  np.testing.assert_array_equal(layer.positions, [[0, 0, 0, 0, 10, 0]])
  for name, axis in cache_lib.ENTRY_AXIS.items():
    if name == 'positions':
      continue
    x = np.moveaxis(np.asarray(getattr(layer, name))[0], axis - 1, 0)  # [S, ...]
    assert np.abs(x[4]).sum() > 0
    assert np.abs(np.delete(x, 4, axis=0)).sum() == 0


def test_logits_index_selects_positions():
  config = helpers.CONFIGS['gemma2']
  params = helpers.params_for(config)
  tokens = helpers.tokens_for(config, B, L, seed=3)
  positions = np.broadcast_to(np.arange(L, dtype=np.int32), (B, L))
  meta = helpers.causal(B, L)
  model = transformer.Transformer(config)
  full, _ = model.apply({'params': params}, tokens, positions, (meta, meta))
  index = np.array([[L - 1, 2], [4, 0]], np.int32)
  picked, _ = model.apply({'params': params}, tokens, positions, (meta, meta),
                          logits_index=index)
  assert picked.shape == (B, 2, config.vocab_size)
  np.testing.assert_allclose(picked, np.take_along_axis(np.asarray(full), index[:, :, None], 1),
                             rtol=1e-6, atol=1e-6)


def test_read_only_cache_errors():
  config = helpers.CONFIGS['gemma1_mqa']
  params = helpers.params_for(config)
  model = transformer.Transformer(config)
  tokens = helpers.tokens_for(config, B, 2, seed=3)
  positions = np.zeros((B, 2), np.int32)
  cache = cache_lib.init_cache(config, B, S)
  mask = np.ones((B, 2, S + 2), bool)
  with pytest.raises(ValueError, match='pass no cache_index'):
    model.apply({'params': params}, tokens, positions, mask, cache,
                np.zeros((B, 2), np.int32), write_cache=False)
  with pytest.raises(ValueError, match='needs a cache'):
    model.apply({'params': params}, tokens, positions, mask[:, :, :2], write_cache=False)
  # The key axis of a read-only call is S + T.
  with pytest.raises(ValueError, match='attention mask has shape'):
    model.apply({'params': params}, tokens, positions, mask[:, :, :S], cache,
                write_cache=False)
  logits, entries = model.apply({'params': params}, tokens, positions, mask, cache,
                                write_cache=False)
  assert logits.shape == (B, 2, config.vocab_size)
  # The new entries are a cache of T = 2 entries in the cache layout.
  k_shape, v_shape, positions_shape = cache_lib.layer_shapes(config, B, 2)
  assert entries['layer_0'].k.shape == k_shape == (B, config.num_kv_heads, config.head_dim, 2)
  assert entries['layer_0'].v.shape == v_shape == (B, config.num_kv_heads, 2, config.head_dim)
  assert entries['layer_0'].positions.shape == positions_shape


def test_grow_cache_appends_empty_entries():
  config = helpers.CONFIGS['gemma1_mqa']
  cache = cache_lib.init_cache(config, B, 4, np.float32)
  filled = jax.tree.map(lambda x: x + 1, cache)
  grown = cache_lib.grow_cache(filled, 7)
  assert cache_lib.cache_length(grown) == 7
  for name, layer in grown.items():
    for field, axis in cache_lib.ENTRY_AXIS.items():
      old, new = np.asarray(getattr(filled[name], field)), np.asarray(getattr(layer, field))
      assert new.shape[axis] == 7 and new.dtype == old.dtype
      np.testing.assert_array_equal(np.take(new, np.arange(4), axis), old)
      assert not np.take(new, np.arange(4, 7), axis).any()
  # truncate_cache cuts the same axes back.
  for old, new in zip(jax.tree.leaves(filled), jax.tree.leaves(cache_lib.truncate_cache(grown, 4))):
    np.testing.assert_array_equal(new, old)
  with pytest.raises(ValueError, match='fewer than length=8'):
    cache_lib.truncate_cache(grown, 8)
  same = cache_lib.grow_cache(filled, 4)  # the same length: allowed, nothing added
  for old, new in zip(jax.tree.leaves(filled), jax.tree.leaves(same)):
    np.testing.assert_array_equal(new, old)
  with pytest.raises(ValueError, match='has 4 entries, more than length=3'):
    cache_lib.grow_cache(filled, 3)
  mixed = {**cache, 'layer_0': cache_lib.truncate_cache({'l': cache['layer_0']}, 2)['l']}
  with pytest.raises(ValueError, match='disagree on the number of entries: \\[2, 4\\]'):
    cache_lib.cache_length(mixed)
