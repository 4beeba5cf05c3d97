"""Model tests compile many tiny programs: skip most XLA optimisations while they run.

The flag is set for this package only and restored afterwards, so other test
packages in the same session compile as usual.
"""

import pytest

from tests import fixtures

_fast_compilation = pytest.fixture(scope='package', autouse=True)(fixtures.fast_compiles)
