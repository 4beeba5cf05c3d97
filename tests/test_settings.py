"""Mode and PositionStrategy: parsing, validation, and the reservation rule."""

import jax.numpy as jnp
import numpy as np
import pytest

from pasta_jax.settings import Mode, PositionStrategy


def test_mode_parses_strings_and_modes():
  assert Mode.parse('pasta') is Mode.PASTA
  assert Mode.parse('sequential') is Mode.SEQUENTIAL
  assert Mode.parse(Mode.SEQUENTIAL) is Mode.SEQUENTIAL
  assert str(Mode.PASTA) == 'pasta' and Mode.PASTA == 'pasta'
  with pytest.raises(ValueError, match=r"mode must be one of \['pasta', 'sequential'\], "
                     r"got 'causal'"):
    Mode.parse('causal')


@pytest.mark.parametrize('kind,reserve,promised,body,expected', [
    ('predicted', 32, 20, 3, 22),   # the promised length + <async> and </async>
    ('oracle', 32, 20, 3, 5),       # the true body length + 2
    ('fixed', 7, 20, 3, 7),         # the constant
])
def test_reserved_on_ints_and_arrays(kind, reserve, promised, body, expected):
  strategy = PositionStrategy(kind, reserve)
  assert strategy.reserved(promised, body) == expected
  np.testing.assert_array_equal(
      strategy.reserved(np.array([promised, promised]), np.array([body, body])),
      np.full(2, expected))
  assert int(jnp.broadcast_to(strategy.reserved(jnp.int32(promised), jnp.int32(body)),
                              ())) == expected


def test_validation_and_decoding():
  with pytest.raises(ValueError, match=r"unknown position strategy 'guess'; expected one of "
                     r"\['predicted', 'oracle', 'fixed'\]"):
    PositionStrategy('guess')
  for bad in (-1, 2.5, True):
    with pytest.raises(ValueError, match='fixed_reserve must be an int >= 0'):
      PositionStrategy('fixed', bad)
  oracle = PositionStrategy('oracle', 9)
  assert not oracle.decodable and oracle.for_decoding() == PositionStrategy('predicted', 9)
  fixed = PositionStrategy('fixed', 5)
  assert fixed.decodable and fixed.for_decoding() is fixed
  assert str(fixed) == 'fixed (5)' and str(PositionStrategy()) == 'predicted'
  assert PositionStrategy.parse('fixed') == PositionStrategy('fixed', 32)
  assert PositionStrategy.parse(fixed) is fixed
