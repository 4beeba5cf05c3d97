"""Shared pytest setup: small, fast, deterministic JAX on the CPU."""

import os

# Tests run on the CPU, whatever accelerator the machine has; tests that need
# several devices start a subprocess with XLA_FLAGS set (see tests/helpers.py).
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# JAX's persistent compilation cache: the suite compiles the same tiny programs in
# many tests and in its subprocesses (inheriting these variables), and a rerun with
# the same jaxlib reuses every entry (the key holds the program, the jaxlib version and
# the compile options; CI's Pythons resolve different JAX releases, so each fills its
# own). A cached program is the program XLA would compile. Programs that compile in
# under 0.2 s are not kept.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '.pytest_cache', 'jax'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.2')

import hypothesis  # noqa: E402

hypothesis.settings.register_profile(
    'ci', max_examples=150, deadline=None, derandomize=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow])
hypothesis.settings.register_profile('dev', max_examples=60, deadline=None)
hypothesis.settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'ci'))
