"""Model tests compile many tiny programs: skip most XLA optimisations while they run.

The flag is set for this package only and restored afterwards, so other test
packages in the same session compile as usual.
"""

import jax
import pytest


@pytest.fixture(scope='package', autouse=True)
def _fast_compilation():
  previous = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', previous)
