"""Every architecture feature against the independent numpy forward pass."""

import dataclasses

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pasta_jax import masks
from pasta_jax.models import config as config_lib
from pasta_jax.models import transformer
from pasta_jax.models.config import GLOBAL
from tests.models import helpers
from tests.models import reference

B, L = 2, 10

# For each config, the features it exercises: each replacement switches one
# off, and the numpy forward must then disagree with the model (so the
# agreement above it is not vacuous).
FEATURES = {
    'gemma1_mha': {'query scaling': dict(query_pre_attn_scalar=2.0)},
    'gemma1_mqa': {'query scaling': dict(query_pre_attn_scalar=2.0)},
    'gemma2': {
        'attention soft-cap': dict(attn_logits_soft_cap=None),
        'final soft-cap': dict(final_logit_softcap=None),
        'sliding window': dict(attention_pattern=(GLOBAL,)),
        'query_pre_attn_scalar': dict(query_pre_attn_scalar=None),
        'post norms': dict(use_post_attn_norm=False, use_post_ffw_norm=False),
    },
    'gemma2_transposed': {
        'attention soft-cap': dict(attn_logits_soft_cap=None),
        'sliding window': dict(attention_pattern=(GLOBAL,)),
    },
    'gemma3': {
        'QK-norm': dict(use_qk_norm=False),
        'local RoPE base': dict(local_rope_base=1_000_000.0),
        'global RoPE base': dict(global_rope_base=10_000.0),
        'global RoPE scaling': dict(global_rope_scale_factor=1.0),
        'sliding window': dict(attention_pattern=(GLOBAL,)),
    },
}


def _inputs(config, seed=0):
  tokens = helpers.tokens_for(config, B, L, seed)
  # Positions with a gap and a repeat, as PASTA reservations produce.
  positions = np.array([[0, 1, 2, 3, 9, 10, 11, 12, 13, 14],
                        [0, 1, 2, 5, 6, 7, 8, 8, 9, 10]], np.int32)
  meta = helpers.causal(B, L)
  return tokens, positions, meta


@pytest.mark.parametrize('name', sorted(helpers.CONFIGS))
def test_matches_numpy_reference(name):
  config = helpers.CONFIGS[name]
  params = helpers.params_for(config)
  tokens, positions, meta = _inputs(config)
  logits = helpers.forward(config, params, tokens, positions, (meta, meta))
  mask = masks.visibility_mask(meta, meta)
  expected = reference.forward(params, config, tokens, positions, mask)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
  for feature, change in FEATURES[name].items():
    without = reference.forward(params, dataclasses.replace(config, **change),
                                tokens, positions, mask)
    assert np.abs(without - logits).max() > 1e-3, (
        f'{name}: switching off {feature} changes nothing; the test would not '
        'notice it missing')


def test_gemma1_uses_qkv_einsum_and_others_do_not():
  mha = helpers.params_for(helpers.CONFIGS['gemma1_mha'])['layer_0']['attn']
  mqa = helpers.params_for(helpers.CONFIGS['gemma1_mqa'])['layer_0']['attn']
  assert set(mha) == {'qkv_einsum', 'attn_vec_einsum'}
  assert set(mqa) == {'q_einsum', 'kv_einsum', 'attn_vec_einsum'}
  assert mha['qkv_einsum']['w'].shape == (3, 4, 32, 8)
  assert mqa['kv_einsum']['w'].shape == (2, 1, 32, 8)


def test_gqa_equals_mha_with_repeated_kv_heads():
  gqa = helpers.CONFIGS['gemma3']  # N=4, K=2
  mha = dataclasses.replace(gqa, num_kv_heads=gqa.num_heads)  # qkv_einsum
  params = helpers.params_for(gqa)
  groups = gqa.num_heads // gqa.num_kv_heads
  mha_params = jax.tree.map(lambda x: x, params)
  for i in range(gqa.num_layers):
    attn = dict(params[f'layer_{i}']['attn'])
    q = attn.pop('q_einsum')['w']
    kv = attn.pop('kv_einsum')['w']
    # Query head n reads kv head n // groups.
    kv_full = jnp.repeat(kv, groups, axis=1)
    attn['qkv_einsum'] = {'w': jnp.concatenate([q[None], kv_full], axis=0)}
    mha_params[f'layer_{i}'] = {**params[f'layer_{i}'], 'attn': attn}
  tokens, positions, meta = _inputs(gqa)
  out_gqa = helpers.forward(gqa, params, tokens, positions, (meta, meta))
  out_mha = helpers.forward(mha, mha_params, tokens, positions, (meta, meta))
  np.testing.assert_allclose(out_gqa, out_mha, rtol=1e-5, atol=1e-5)


def test_embedding_scale_and_tied_output():
  config = helpers.tiny(num_layers=1)
  params = helpers.params_for(config)
  # Zeroing every block's output projections leaves embed -> final norm ->
  # tied unembed: logits = rms(E[t] * sqrt(D)) @ E^T.
  zeroed = jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.zeros_like(x) if p[-2].key in ('attn_vec_einsum',)
      or p[-1].key == 'linear' else x, params)
  tokens, positions, meta = _inputs(config)
  logits = helpers.forward(config, zeroed, tokens, positions, (meta, meta))
  table = np.asarray(params['embedder']['input_embedding'], np.float64)
  scale = np.asarray(params['final_norm']['scale'], np.float64)
  expected = reference.rms_norm(table[tokens] * np.sqrt(32), scale) @ table.T
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_bfloat16_params_and_activations_track_float32():
  config = helpers.CONFIGS['gemma2']
  config16 = dataclasses.replace(config, dtype='bfloat16',
                                 param_dtype='bfloat16')
  params = helpers.params_for(config)
  params16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  tokens, positions, meta = _inputs(config)
  out32 = helpers.forward(config, params, tokens, positions, (meta, meta))
  out16 = helpers.forward(config16, params16, tokens, positions, (meta, meta))
  assert out16.dtype == np.float32  # logits always accumulate in float32
  assert np.isfinite(out16).all()
  np.testing.assert_allclose(out16, out32, atol=0.1)
  shapes = transformer.param_shapes(config16)
  assert {x.dtype for x in jax.tree.leaves(shapes)} == {jnp.dtype('bfloat16')}


def test_remat_same_values_and_gradients():
  config = helpers.CONFIGS['gemma3']
  remat = dataclasses.replace(config, remat=True)
  params = helpers.params_for(config)
  tokens, positions, meta = _inputs(config)

  def loss(cfg):
    def f(p):
      logits, _ = transformer.Transformer(cfg).apply(
          {'params': p}, tokens, positions, (meta, meta))
      return jnp.mean(jax.nn.log_softmax(logits)[..., 0])
    return jax.jit(jax.value_and_grad(f))(params)

  (value, grads), (value_r, grads_r) = loss(config), loss(remat)
  np.testing.assert_allclose(value, value_r, rtol=1e-6)
  # Remat recomputes the forward inside the backward pass, where XLA may fuse and sum
  # in another order: float32 rounding, up to ~2e-7 on gradients of order 1e-2.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               grads, grads_r)


def test_config_validation():
  with pytest.raises(ValueError, match='multiple of num_kv_heads'):
    helpers.tiny(num_kv_heads=3)
  with pytest.raises(ValueError, match='sliding_window_size'):
    helpers.tiny(attention_pattern=config_lib.GEMMA2_PATTERN)
  with pytest.raises(ValueError, match='head_dim must be even'):
    helpers.tiny(head_dim=7)
  with pytest.raises(ValueError, match='attention_pattern'):
    helpers.tiny(attention_pattern=('sliding',))
  with pytest.raises(ValueError, match='Unknown model preset'):
    config_lib.get_config('gemma4_xl')
  with pytest.raises(ValueError, match='Unknown TransformerConfig fields'):
    config_lib.get_config('tiny', vocab=10)
  small = config_lib.get_config('small', vocab_size=1024)
  assert small.vocab_size == 1024
  assert config_lib.TransformerConfig.from_json(small.to_json()) == small


@pytest.mark.parametrize('name', ['gemma1_mha', 'gemma1_mqa', 'gemma2_transposed', 'gemma3'])
def test_a_model_reads_weights_stored_permuted(name):
  """`Transformer(layouts=...)` on weights stored permuted computes what the
  canonical model computes on the canonical weights (the decode loop's layouts)."""
  config = helpers.CONFIGS[name]
  params = helpers.params_for(config)
  perms = {'input_embedding': (1, 0), 'q_einsum': (1, 0, 2), 'kv_einsum': (2, 0, 1, 3),
           'qkv_einsum': (2, 0, 1, 3), 'gating_einsum': (0, 2, 1)}

  def permute(path, x):
    keys = [p.key for p in path]
    perm = perms.get(keys[-2] if keys[-1] == 'w' else keys[-1])
    return x if perm is None else jnp.transpose(x, perm)
  stored = jax.tree_util.tree_map_with_path(permute, params)
  changed = sum(a.shape != b.shape for a, b in zip(jax.tree.leaves(params),
                                                   jax.tree.leaves(stored)))
  assert changed >= config.num_layers  # the test permutes something in every layer
  layouts = tuple(sorted(perms.items()))
  tokens = helpers.tokens_for(config, B, L, seed=1)
  positions = np.broadcast_to(np.arange(L, dtype=np.int32), (B, L))
  meta = helpers.causal(B, L)
  expected, _ = transformer.Transformer(config).apply({'params': params}, tokens, positions,
                                                     (meta, meta))
  got, _ = transformer.Transformer(config, layouts=layouts).apply(
      {'params': stored}, tokens, positions, (meta, meta))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  # The canonical weights do not fit the permuted model.
  with pytest.raises(flax.errors.ScopeParamShapeError):
    transformer.Transformer(config, layouts=layouts).apply({'params': params}, tokens,
                                                           positions, (meta, meta))
