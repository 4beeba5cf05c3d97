"""Sharded forward and decode equal the single-device ones (8 fake CPU devices).

Run by test_sharding.py in a fresh process, because the device count must be
set before JAX starts: python tests/models/sharded_check.py WORKDIR
"""

import os
import sys

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8')
os.environ['JAX_PLATFORMS'] = 'cpu'
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # XLA's resharding notes

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from pasta_jax import masks  # noqa: E402
from pasta_jax.models import cache as cache_lib  # noqa: E402
from pasta_jax.models import checkpoint, sharding, transformer  # noqa: E402
from pasta_jax.models.config import GEMMA2_PATTERN, TransformerConfig  # noqa: E402

jax.config.update('jax_disable_most_optimizations', True)

B, T, S = 4, 6, 8


def run(config, workdir):
  assert jax.device_count() == 8
  mesh = sharding.make_mesh((2, 2, 2))
  rules = sharding.default_rules(config, mesh)
  params = checkpoint.unflatten({  # non-zero norm scales
      p: (x + 0.3 if p.endswith('scale') else x) for p, x in checkpoint.flatten(
          transformer.init_params(config, jax.random.key(0), mesh=mesh,
                                  rules=rules)).items()})
  q_sharding = params['layer_0']['attn']['q_einsum']['w'].sharding
  assert q_sharding.spec == P('tensor', 'fsdp', None), q_sharding.spec
  kv_spec = params['layer_0']['attn']['kv_einsum']['w'].sharding.spec
  kv_expected = 'tensor' if config.num_kv_heads % 2 == 0 else None
  assert tuple(kv_spec)[:2] == (None, kv_expected), kv_spec
  # Restoring a checkpoint straight into the shardings.
  path = os.path.join(workdir, f'kv{config.num_kv_heads}')
  checkpoint.save_params(path, params)
  shardings = sharding.param_shardings(config, mesh, rules)
  restored = checkpoint.load_params(path, config, shardings=shardings)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
    assert a.sharding.is_equivalent_to(b.sharding, a.ndim), a.sharding

  host_params = jax.device_get(params)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, config.vocab_size, (B, T)).astype(np.int32)
  positions = np.broadcast_to(np.arange(T), (B, T)).astype(np.int32)
  meta = masks.AttentionMeta(*(np.broadcast_to(a, (B, T)).copy()
                               for a in masks.causal_meta(T)))
  model = transformer.Transformer(config)
  apply = lambda p, *a: model.apply({'params': p}, *a)

  expected, _ = jax.jit(apply)(host_params, tokens, positions, (meta, meta))
  cache = cache_lib.init_cache(config, B, S)
  key_meta = masks.AttentionMeta(*(np.zeros((B, S), np.int32) for _ in meta))
  index = np.broadcast_to(np.arange(T)[::-1] + 1, (B, T)).astype(np.int32)
  for k, q in zip(key_meta, meta):
    np.put_along_axis(k, index, q, axis=1)
  expected_step, expected_cache = jax.jit(apply)(
      host_params, tokens, positions, (meta, key_meta), cache, index)

  batch = NamedSharding(mesh, P(('data', 'fsdp')))
  put = lambda x: jax.device_put(x, batch)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    logits, _ = jax.jit(apply)(params, put(tokens), put(positions),
                               jax.tree.map(put, (meta, meta)))
    cache = jax.jit(lambda: cache_lib.init_cache(config, B, S),
                    out_shardings=sharding.cache_shardings(config, mesh,
                                                           rules))()
    step, new_cache = jax.jit(apply)(params, put(tokens), put(positions),
                                     jax.tree.map(put, (meta, key_meta)),
                                     cache, put(index))
  assert logits.sharding.spec[0] == ('data', 'fsdp'), logits.sharding
  # k [B, K, H, S] and v [B, K, S, H]: batch over data+fsdp, kv heads over tensor.
  for field in ('k', 'v'):
    got = getattr(new_cache['layer_1'], field).sharding
    assert got.is_equivalent_to(
        NamedSharding(mesh, P(('data', 'fsdp'), kv_expected, None, None)), 4), (field, got)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(step, expected_step, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(new_cache['layer_1'].k, expected_cache['layer_1'].k,
                             rtol=1e-5, atol=1e-5)


def main(workdir):
  base = dict(num_layers=2, vocab_size=64, embed_dim=32, hidden_dim=48,
              num_heads=4, head_dim=8, attention_pattern=GEMMA2_PATTERN,
              sliding_window_size=3, use_post_attn_norm=True,
              use_post_ffw_norm=True, use_qk_norm=True,
              attn_logits_soft_cap=5.0)
  run(TransformerConfig(num_kv_heads=2, **base), workdir)  # GQA, kv sharded
  run(TransformerConfig(num_kv_heads=1, **base), workdir)  # MQA, kv replicated
  print('sharded == unsharded')


if __name__ == '__main__':
  main(sys.argv[1])
