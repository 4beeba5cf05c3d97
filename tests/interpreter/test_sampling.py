"""Sampling: the two-reduction argmax, greedy decoding under a grammar mask, and
batches that draw random numbers only when a request samples (`Requests.draws`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pasta_jax.interpreter import sampling
from pasta_jax.interpreter import state


@pytest.mark.parametrize('shape', [(1, 1, 512), (2, 8, 37), (5,)])
def test_argmax_equals_jnp_argmax(shape):
  rng = np.random.default_rng(0)
  x = rng.normal(size=shape).astype(np.float32)
  # Ties: the first index of the maximum wins.
  x[..., -1] = x.max(axis=-1)
  x[..., 1] = x.max(axis=-1)
  got = np.asarray(sampling.argmax(jnp.asarray(x)))
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, np.asarray(jnp.argmax(x, axis=-1)))
  np.testing.assert_array_equal(got, np.argmax(x, axis=-1))


def test_argmax_edge_rows():
  x = np.array([[-np.inf] * 4,               # nothing allowed: index 0, as jnp.argmax
                [1.0, np.nan, 3.0, np.nan],   # NaN counts as the maximum
                [-np.inf, 2.0, -np.inf, 2.0],
                [np.inf, 0.0, np.inf, 1.0]], np.float32)
  np.testing.assert_array_equal(np.asarray(sampling.argmax(jnp.asarray(x))),
                                np.asarray(jnp.argmax(x, axis=-1)))
  np.testing.assert_array_equal(np.asarray(sampling.argmax(jnp.asarray(x))), [0, 1, 1, 0])


def test_greedy_sample_is_the_masked_argmax():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(3, 4, 50)).astype(np.float32)
  allowed = rng.random((3, 4, 50)) < 0.3
  allowed[..., 7] = True
  token = sampling.sample(jnp.asarray(logits), jnp.asarray(allowed),
                          jax.vmap(jax.random.key)(jnp.arange(3, dtype=jnp.uint32)),
                          jnp.array(5), jnp.zeros(3), jnp.ones(3), top_k=0, use_top_p=False)
  np.testing.assert_array_equal(np.asarray(token),
                                np.where(allowed, logits, -np.inf).argmax(-1))


def _sample_args(temperature):
  rng = np.random.default_rng(2)
  logits = jnp.asarray(rng.normal(size=(3, 4, 50)).astype(np.float32))
  allowed = jnp.asarray(rng.random((3, 4, 50)) < 0.5)
  keys = jax.vmap(jax.random.key)(jnp.arange(3, dtype=jnp.uint32))
  return (logits, allowed, keys, jnp.array(7), jnp.asarray(temperature, jnp.float32),
          jnp.ones(3))


@pytest.mark.parametrize('draws', [False, True])
def test_greedy_batch_gives_the_same_tokens_with_or_without_the_draws(draws):
  args = _sample_args([0.0, 0.0, 0.0])
  token = sampling.sample(*args, top_k=0, use_top_p=False, draws=draws)
  logits, allowed = np.asarray(args[0]), np.asarray(args[1])
  np.testing.assert_array_equal(np.asarray(token),
                                np.where(allowed, logits, -np.inf).argmax(-1))


def test_a_batch_without_draws_compiles_no_random_numbers_and_no_conditional():
  args = _sample_args([0.0, 0.0, 0.0])
  text = lambda draws: jax.jit(lambda *a: sampling.sample(
      *a, top_k=0, use_top_p=False, draws=draws)).lower(*args).as_text()
  greedy, drawing = text(False), text(True)
  assert 'threefry' in drawing or 'random' in drawing  # the check can tell them apart
  for op in ('threefry', 'random_bits', 'stablehlo.case', 'stablehlo.if'):
    assert op not in greedy


def test_drawing_batch_keeps_greedy_requests_greedy():
  # Request 1 samples at a high temperature; requests 0 and 2 stay greedy.
  args = _sample_args([0.0, 5.0, 0.0])
  token = np.asarray(sampling.sample(*args, top_k=0, use_top_p=False, draws=True))
  logits, allowed = np.asarray(args[0]), np.asarray(args[1])
  greedy = np.where(allowed, logits, -np.inf).argmax(-1)
  np.testing.assert_array_equal(token[[0, 2]], greedy[[0, 2]])
  assert allowed[1, np.arange(4), token[1]].all()
  assert (token[1] != greedy[1]).any()  # at temperature 5 over ~25 tokens, 4 slots


def test_requests_draw_exactly_when_a_temperature_is_positive():
  make = lambda t: state.make_requests([0, 1], temperature=t, top_p=1.0,
                                       forced=state.no_forcing(2, 3),
                                       logit_bias=np.zeros(8, np.float32))
  assert not make(0.0).draws
  assert not make([0.0, 0.0]).draws
  assert make([0.0, 0.7]).draws
  assert make(1.0).draws
  # Static: the two are different pytree structures (two programs under jit).
  assert (jax.tree_util.tree_structure(make(0.0))
          != jax.tree_util.tree_structure(make(1.0)))
