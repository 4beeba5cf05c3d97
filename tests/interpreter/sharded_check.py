"""Sharded generation on 8 fake CPU devices equals single-device generation.

Run by test_sharding.py in a fresh process (the device count must be set before
JAX starts): python tests/interpreter/sharded_check.py
"""

import dataclasses
import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8')
os.environ['JAX_PLATFORMS'] = 'cpu'
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # noqa: E402
import numpy as np  # noqa: E402

from pasta_jax import models  # noqa: E402
from pasta_jax import tokenizer as tokenizer_lib  # noqa: E402
from pasta_jax.data import synthetic  # noqa: E402
from pasta_jax.interpreter import Interpreter, InterpreterConfig  # noqa: E402
from pasta_jax.models import sharding  # noqa: E402

jax.config.update('jax_disable_most_optimizations', True)


def main():
  assert jax.device_count() == 8
  texts = []
  for example in synthetic.generate('train', 200):
    texts += [example.prompt, example.plain]
  tok = tokenizer_lib.train_tokenizer(texts, None, vocab_size=400, max_promise_tokens=100)
  config = models.get_config('tiny', vocab_size=tok.vocab_size, num_layers=2)
  params = models.init_params(config, jax.random.key(0))
  icfg = InterpreterConfig(slots=4, max_threads=4, cache_size=96, max_steps=40,
                           max_topic_tokens=2, record_logits=True)
  c = tok.control
  bias = {c.promise: 4.0, c.sync: 3.0, c.async_close: 3.0, **{t: 3.0 for t in c.lengths}}
  prompts = ['one', 'two prompts', 'a third, longer prompt', 'four']
  single = Interpreter(config, params, tok, icfg).generate(
      prompts, temperature=1.0, seed=5, logit_bias=bias)
  mesh = sharding.make_mesh((2, 2, 2))
  sharded_interp = Interpreter(config, params, tok, icfg, mesh=mesh)
  q = sharded_interp.params['layer_0']['attn']['q_einsum']['w']
  assert q.sharding.spec == jax.sharding.PartitionSpec('tensor', 'fsdp', None), q.sharding
  sharded = sharded_interp.generate(prompts, temperature=1.0, seed=5, logit_bias=bias)
  # Three requests: the batch is padded to the 4-way batch split.
  odd = sharded_interp.generate(prompts[:3], temperature=1.0, seed=5, logit_bias=bias)
  assert any(len(r.threads) > 1 for r in single)
  for a, b in zip(single, sharded):
    assert (a.ids, a.status, a.steps, a.timeline) == (b.ids, b.status, b.steps, b.timeline)
    np.testing.assert_allclose(a.logits, b.logits, rtol=1e-4, atol=1e-4)
  assert [r.ids for r in odd] == [r.ids for r in single[:3]]
  # Cache stages on the mesh: the cache grows from 48 entries to 96 mid-generation.
  staged = Interpreter(config, params, tok, dataclasses.replace(icfg, cache_stages=(48,)),
                       mesh=mesh).generate(prompts, temperature=1.0, seed=5, logit_bias=bias)
  assert max(r.total_tokens for r in single) > 48
  for a, b in zip(single, staged):
    assert (a.ids, a.status, a.steps, a.timeline) == (b.ids, b.status, b.steps, b.timeline)
    np.testing.assert_allclose(a.logits, b.logits, rtol=1e-4, atol=1e-4)
  print('sharded generation == single-device generation')


if __name__ == '__main__':
  main()
