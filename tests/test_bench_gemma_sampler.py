"""scripts/bench_gemma_sampler.py without the gemma library (CI does not install it):
the weights it hands the library have the library's param tree, our decoders write
the greedy tokens the sampler is asked for, and the table's arithmetic."""

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pasta_jax import benchmarking
from pasta_jax import models
from tests import fixtures

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / 'scripts'


def _load(name):
  return fixtures.load_script(str(SCRIPTS / f'{name}.py'), name)


@pytest.fixture(scope='module')
def bench():
  return _load('bench_gemma_sampler')


def _gemma2_tiny(**overrides):
  fields = dict(num_layers=2, vocab_size=512, embed_dim=16, hidden_dim=32, num_heads=2,
                head_dim=8, num_kv_heads=1, sliding_window_size=6, query_pre_attn_scalar=None,
                dtype='float32', param_dtype='float32')
  return models.get_config('gemma2_2b', **{**fields, **overrides})


def _layer(i, shapes):
  return {f'layer_{i}/{path}': shape for path, shape in shapes.items()}


# The gemma library's param tree (gemma/gm/nn/_modules.py: Embedder, Attention,
# FeedForward, Block; _layers.RMSNorm), written out for D=16, F=32, N=2, H=8.
_NORMS = {f'{norm}/scale': (16,) for norm in (
    'pre_attention_norm', 'post_attention_norm', 'pre_ffw_norm', 'post_ffw_norm')}
GEMMA2_GQA = {  # K=1 < N: q_einsum and kv_einsum; gating (2, D, F)
    'embedder/input_embedding': (512, 16), 'final_norm/scale': (16,),
    **{path: shape for i in range(2) for path, shape in _layer(i, {
        'attn/q_einsum/w': (2, 16, 8), 'attn/kv_einsum/w': (2, 1, 16, 8),
        'attn/attn_vec_einsum/w': (2, 8, 16), 'mlp/gating_einsum': (2, 16, 32),
        'mlp/linear': (32, 16), **_NORMS}).items()}}
GEMMA3_MHA = {  # K=N: qkv_einsum; QK-norm; gating stored transposed (2, F, D)
    'embedder/input_embedding': (512, 16), 'final_norm/scale': (16,),
    **{path: shape for i in range(2) for path, shape in _layer(i, {
        'attn/qkv_einsum/w': (3, 2, 16, 8), 'attn/attn_vec_einsum/w': (2, 8, 16),
        'attn/_query_norm/scale': (8,), 'attn/_key_norm/scale': (8,),
        'mlp/gating_einsum': (2, 32, 16), 'mlp/linear': (32, 16), **_NORMS}).items()}}


@pytest.mark.parametrize('overrides, expected', [
    ({}, GEMMA2_GQA),
    ({'num_kv_heads': 2, 'use_qk_norm': True, 'transpose_gating_einsum': True}, GEMMA3_MHA)])
def test_exported_weights_have_the_gemma_library_param_tree(bench, overrides, expected):
  config = _gemma2_tiny(**overrides)
  params = models.init_params(config, jax.random.key(0))
  exported = bench.export_params(params)
  assert {path: x.shape for path, x in exported.items()} == expected
  assert all(x.dtype == np.float32 for x in exported.values())
  np.testing.assert_array_equal(exported['layer_1/mlp/linear'],
                                params['layer_1']['mlp']['linear'])


def test_the_two_sizes_are_gemma2_style_and_of_the_issues_sizes(bench):
  sizes = {size: bench.gemma2_style(size) for size in bench.SIZES}
  assert {s: round(models.count_params(c) / 1e6, 1) for s, c in sizes.items()} == {
      '6m': 5.9, '159m': 158.9}
  for config in sizes.values():
    assert config.attention_pattern == models.config.GEMMA2_PATTERN
    assert (config.attn_logits_soft_cap, config.final_logit_softcap) == (50.0, 30.0)
    assert config.use_post_attn_norm and config.use_post_ffw_norm
    assert not config.use_qk_norm and config.dtype == config.param_dtype == 'float32'


def _greedy_full_forward(config, params, prompt, forbidden, n):
  """Greedy decoding by full causal forward passes (no cache) that never choose
  `forbidden`: what gm.text.Sampler(forbidden_tokens=...) computes."""
  model = models.Transformer(config)
  length = len(prompt) + n
  causal = jnp.tril(jnp.ones((length, length), bool))[None]

  @jax.jit
  def next_token(ids, t):  # ids [length]: the first t are written, the rest masked out
    logits, _ = model.apply({'params': params}, ids[None], jnp.arange(length)[None], causal)
    return jnp.argmax(logits[0, t - 1].at[jnp.asarray(forbidden)].set(-jnp.inf))

  ids = np.zeros(length, np.int32)
  ids[:len(prompt)] = prompt
  for t in range(len(prompt), length):
    ids[t] = next_token(ids, t)
  return ids[len(prompt):].tolist()


@pytest.fixture(scope='module')
def fast_compiles():
  yield from fixtures.fast_compiles()


def test_our_decoders_write_the_greedy_tokens_the_sampler_is_asked_for(bench, fast_compiles):
  tok = fixtures.synthetic_tokenizer(200)
  config = _gemma2_tiny()
  params = models.init_params(config, jax.random.key(1))
  new_tokens, prompt_tokens = 5, 8
  decoders = bench.our_decoders(config, params, tok, prompt_tokens=prompt_tokens,
                                cache_size=16, new_tokens=new_tokens)
  assert set(decoders) == {(bench.SEQUENTIAL, 1), (bench.SEQUENTIAL, 5), (bench.PASTA, 1),
                           (bench.PASTA, 5)}
  is_text = decoders[bench.SEQUENTIAL, 1].tables.is_text
  rng = np.random.default_rng(0)
  prompts = np.concatenate([np.full((2, 1), tok.bos_id),
                            rng.choice(np.flatnonzero(is_text), (2, prompt_tokens - 1))],
                           axis=1).astype(np.int32)
  spec = bench.gemma_spec(config, 'weights.npz', prompts, tok, np.flatnonzero(~is_text), 16,
                          new_tokens)
  assert spec['prompts'] == prompts[:, 1:].tolist()  # the sampler adds BOS
  assert spec['special']['bos'] == tok.bos_id and tok.eos_id in spec['forbidden']
  bias = bench.banned(tok)
  seq = bench.our_tokens(decoders[bench.SEQUENTIAL, new_tokens], prompts, bias)
  pasta = bench.our_tokens(decoders[bench.PASTA, new_tokens], prompts, bias)
  reference = [_greedy_full_forward(config, params, p, spec['forbidden'], new_tokens)
               for p in prompts]
  assert bench.mismatches(seq, reference) == 0
  assert bench.mismatches(pasta, reference) == 0
  assert [len(t) for t in seq] == [new_tokens] * 2
  first = bench.our_tokens(decoders[bench.SEQUENTIAL, 1], prompts, bias)
  assert first == [t[:1] for t in seq]
  best = benchmarking.interleaved(bench.our_functions(decoders, prompts, bias), runs=1)
  assert set(best) == set(decoders) and all(0 < t < float('inf') for t in best.values())


def test_rows_time_decode_by_difference_and_compare_with_the_sampler(bench):
  best = {(bench.GEMMA, 1): 0.010, (bench.GEMMA, 5): 0.030,
          (bench.SEQUENTIAL, 1): 0.004, (bench.SEQUENTIAL, 5): 0.024,
          (bench.PASTA, 1): 0.005, (bench.PASTA, 5): 0.029}
  assert bench.timing_row(best, bench.SEQUENTIAL, 5) == pytest.approx(
      {'first': 4.0, 'decode': 5.0, 'end_to_end': 4.8})
  rows = bench.table_rows('tiny', 2, best, 5, {bench.SEQUENTIAL: 0, bench.PASTA: 3})
  assert rows == [
      '| tiny | 2 | gemma sampler | 10.00 | 5.000 | 6.000 | 1.00 | 1.00 | 0 |',
      '| tiny | 2 | pasta_jax sequential (S=1) | 4.00 | 5.000 | 4.800 | 1.00 | 0.80 | 0 |',
      '| tiny | 2 | pasta_jax PASTA (S=8), one thread | 5.00 | 6.000 | 5.800 | 1.20 | 0.97 | 3 |']
  assert len(rows[0].split('|')) == len(bench.HEADER.splitlines()[0].split('|'))


def test_mismatches_count_differing_and_missing_tokens(bench):
  assert bench.mismatches([[1, 2, 3], [4, 5]], [[1, 9, 3], [4, 5]]) == 1
  assert bench.mismatches([[1, 2]], [[1, 2, 3]]) == 1
  with pytest.raises(ValueError):
    bench.mismatches([[1]], [[1], [2]])


def test_the_worker_lists_every_layout_difference():
  worker = _load('gemma_sampler_worker')
  assert worker._layout_differences(  # pylint: disable=protected-access
      {'a/w': (2, 3), 'b/w': (4,), 'extra/w': (1,)},
      {'a/w': (2, 3), 'b/w': (5,), 'c/scale': (7,)}) == [
          'missing: c/scale (7,)', 'unexpected: extra/w (1,)',
          'mis-shaped: b/w: given (4,), the model has (5,)']


def test_without_the_library_and_without_install_it_refuses_in_one_line(tmp_path):
  out = subprocess.run(
      [sys.executable, 'scripts/bench_gemma_sampler.py', '--venv', str(tmp_path / 'venv'),
       '--noinstall'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2
  assert '--noinstall' in out.stderr and 'lacks a working' in out.stderr
  assert 'Traceback' not in out.stderr
  assert not (tmp_path / 'venv').exists()
