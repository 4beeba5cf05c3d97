"""Shared pytest setup: small, fast, deterministic JAX on the CPU."""

import os

# Tests run on the CPU, whatever accelerator the machine has; tests that need
# several devices start a subprocess with XLA_FLAGS set (see tests/helpers.py).
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import hypothesis  # noqa: E402

hypothesis.settings.register_profile(
    'ci', max_examples=150, deadline=None, derandomize=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow])
hypothesis.settings.register_profile('dev', max_examples=60, deadline=None)
hypothesis.settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'ci'))
