"""Masks: hidden tokens have no influence, both mask forms agree, padding is
harmless, and bad arguments fail with a clear error."""

import jax.numpy as jnp
import numpy as np
import pytest

from pasta_jax import masks
from pasta_jax.models import cache as cache_lib
from pasta_jax.models import transformer
from tests.models import helpers

CONFIG = helpers.CONFIGS['gemma2']  # sliding window, soft-caps


def _pasta(batch=2):
  meta1, positions1, _ = helpers.pasta_example()
  n = len(positions1)
  return (helpers.batch_meta(meta1, batch),
          np.broadcast_to(positions1, (batch, n)).copy(),
          helpers.tokens_for(CONFIG, batch, n, seed=3))


def test_changing_a_future_token_changes_only_later_logits():
  params = helpers.params_for(CONFIG)
  tokens = helpers.tokens_for(CONFIG, 2, 12)
  positions = np.broadcast_to(np.arange(12), (2, 12)).astype(np.int32)
  meta = helpers.causal(2, 12)
  before = helpers.forward(CONFIG, params, tokens, positions, (meta, meta))
  changed = tokens.copy()
  changed[:, 7] = (changed[:, 7] + 1) % CONFIG.vocab_size
  after = helpers.forward(CONFIG, params, changed, positions, (meta, meta))
  np.testing.assert_array_equal(after[:, :7], before[:, :7])
  assert np.abs(after[:, 7:] - before[:, 7:]).max(axis=-1).min() > 1e-4


def test_tokens_hidden_by_the_pasta_mask_have_no_influence():
  params = helpers.params_for(CONFIG)
  meta, positions, tokens = _pasta()
  before = helpers.forward(CONFIG, params, tokens, positions, (meta, meta))
  changed = tokens.copy()
  changed[:, 5] = (changed[:, 5] + 1) % CONFIG.vocab_size  # thread 1's 2nd token
  after = helpers.forward(CONFIG, params, changed, positions, (meta, meta))
  mask = masks.visibility_mask(meta, meta)[0]
  sees = mask[:, 5]
  # Who sees token 5: itself, thread 1's later token 6, the sync 12 and 13.
  assert np.flatnonzero(sees).tolist() == [5, 6, 12, 13]
  blind = ~sees
  np.testing.assert_array_equal(after[:, blind], before[:, blind])
  assert np.abs(after[:, sees] - before[:, sees]).max(axis=-1).min() > 1e-5


def test_attention_meta_equals_explicit_mask():
  params = helpers.params_for(CONFIG)
  meta, positions, tokens = _pasta()
  mask = masks.visibility_mask(meta, meta)
  from_meta = helpers.forward(CONFIG, params, tokens, positions, (meta, meta))
  from_mask = helpers.forward(CONFIG, params, tokens, positions, mask)
  # Two programs (the mask built inside the jitted function from the metadata,
  # or passed in): XLA may fuse them differently, so the logits agree to float
  # rounding, not bit for bit (jax 0.12 differs by ~6e-7).
  np.testing.assert_allclose(from_meta, from_mask, rtol=1e-5, atol=1e-5)
  # And with a cache: a prefill of every token into a longer cache.
  n, s = tokens.shape[1], 20
  cache = cache_lib.init_cache(CONFIG, 2, s, jnp.float32)
  index = np.broadcast_to(np.arange(n)[::-1] + 3, (2, n)).astype(np.int32)
  key_meta = masks.AttentionMeta(*(np.zeros((2, s), np.int32) for _ in meta))
  for k, q in zip(key_meta, meta):
    np.put_along_axis(k, index, q, axis=1)
  apply = helpers.jitted_apply(CONFIG)
  a, cache_a = apply(params, tokens, positions, (meta, key_meta), cache, index)
  b, cache_b = apply(params, tokens, positions,
                     masks.visibility_mask(meta, key_meta), cache, index)
  # Two programs again: equal to float rounding. Layer 1's keys come from layer
  # 0's output, which the mask shapes.
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(a, from_meta, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(cache_a['layer_1'].k, cache_b['layer_1'].k,
                             rtol=1e-5, atol=1e-5)


def test_padding_changes_nothing_and_masked_rows_are_finite():
  params = helpers.params_for(CONFIG)
  tokens = helpers.tokens_for(CONFIG, 2, 10)
  positions = np.broadcast_to(np.arange(10), (2, 10)).astype(np.int32)
  meta = helpers.causal(2, 10)
  meta.segment[1, 6:] = 0  # row 1: 6 tokens and 4 padding entries
  tokens[1, 6:] = 0
  padded = helpers.forward(CONFIG, params, tokens, positions, (meta, meta))
  short = helpers.forward(CONFIG, params, tokens[1:, :6], positions[1:, :6],
                          tuple(helpers.causal(1, 6) for _ in range(2)))
  np.testing.assert_allclose(padded[1, :6], short[0], rtol=1e-5, atol=1e-5)
  assert np.isfinite(padded).all()  # padding rows see nothing, yet no NaN
  nothing = np.zeros((2, 10, 10), bool)
  assert np.isfinite(helpers.forward(CONFIG, params, tokens, positions,
                                     nothing)).all()


def test_bad_arguments_fail_clearly():
  params = helpers.params_for(CONFIG)
  model = transformer.Transformer(CONFIG)
  apply = lambda *args, **kw: model.apply({'params': params}, *args, **kw)
  tokens = np.zeros((2, 4), np.int32)
  positions = np.zeros((2, 4), np.int32)
  mask = np.ones((2, 4, 4), bool)
  meta = helpers.causal(2, 4)
  cache = cache_lib.init_cache(CONFIG, 2, 8)
  index = np.zeros((2, 4), np.int32)
  with pytest.raises(ValueError, match=r'attention mask has shape \(2, 4, 3\)'):
    apply(tokens, positions, mask[..., :3])
  with pytest.raises(ValueError, match='must be boolean'):
    apply(tokens, positions, mask.astype(np.int32))
  with pytest.raises(TypeError, match='boolean mask .* or a pair'):
    apply(tokens, positions, meta)  # one AttentionMeta, not a pair
  with pytest.raises(ValueError, match=r'key AttentionMeta.thread has shape'):
    apply(tokens, positions, (meta, helpers.causal(2, 5)))
  with pytest.raises(ValueError, match='needs cache_index'):
    apply(tokens, positions, np.ones((2, 4, 8), bool), cache)
  with pytest.raises(ValueError, match='cache_index given without a cache'):
    apply(tokens, positions, mask, None, index)
  with pytest.raises(ValueError, match=r'expected \[B, T, S\] = \(2, 4, 8\)'):
    apply(tokens, positions, mask, cache, index)  # S is the cache length
  with pytest.raises(ValueError, match='cache_index has shape'):
    apply(tokens, positions, np.ones((2, 4, 8), bool), cache, index[:, :3])
  with pytest.raises(ValueError, match='positions has shape'):
    apply(tokens, positions[:, :3], mask)
  with pytest.raises(ValueError, match='tokens must be'):
    apply(tokens[0], positions, mask)
  with pytest.raises(ValueError, match='cache must be a dict'):
    apply(tokens, positions, np.ones((2, 4, 8), bool), {'layer_0': cache[
        'layer_0']}, index)
  with pytest.raises(ValueError, match=r"cache\['layer_0'\] has k"):
    apply(tokens, positions, np.ones((2, 4, 8), bool),
          cache_lib.init_cache(CONFIG, 1, 8), index)
