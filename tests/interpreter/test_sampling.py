"""Sampling: the two-reduction argmax and greedy decoding under a grammar mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pasta_jax.interpreter import sampling


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
