"""Forward and single-step decode time of the model presets (random weights).

    python scripts/bench_model.py                      # the CPU presets
    python scripts/bench_model.py --presets tiny,small --runs 20

For each preset: a full forward pass over [B, T] tokens (training / prefill
shape) and one decode step (T = 1) against a cache of S entries, both through
the project's mask path (AttentionMeta pairs, mask built inside the jitted
function). Compilation is excluded (one warm-up call); the table reports the
median of --runs calls. Public Gemma presets run only when named in --presets
and when their float32 weights fit in the memory this machine has; the others
are listed as skipped.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Sequence

from absl import app
from absl import flags
import jax
import numpy as np

from pasta_jax import cli
from pasta_jax import masks
from pasta_jax.models import cache as cache_lib
from pasta_jax.models import config as config_lib
from pasta_jax.models import transformer

_PRESETS = flags.DEFINE_string('presets', ','.join(config_lib.CPU_PRESETS),
                               'Comma-separated preset names.')
_BATCH = flags.DEFINE_integer('batch', 1, 'Batch size of the forward pass.')
_SEQ_LEN = flags.DEFINE_integer('seq_len', 256, 'Tokens per row of the forward pass.')
_CACHE_LEN = flags.DEFINE_integer('cache_len', 512, 'Cache entries of the decode step.')
_DECODE_BATCHES = flags.DEFINE_string('decode_batches', '1,8',
                                      'Batch sizes of the decode step.')
_RUNS = flags.DEFINE_integer('runs', 10, 'Timed calls; the median is reported.')


def _meta(batch: int, length: int, start: int = 0) -> masks.AttentionMeta:
  meta = masks.causal_meta(start + length)
  return masks.AttentionMeta(*(np.broadcast_to(a[start:], (batch, length)).copy()
                               for a in meta))


def _median_ms(fn, runs: int) -> float:
  jax.block_until_ready(fn())  # compile and warm up
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def bench(config, *, batch: int, seq_len: int, cache_len: int,
          decode_batches: tuple[int, ...], runs: int) -> dict[str, float]:
  """Median milliseconds of one forward pass and of one decode step."""
  params = transformer.init_params(config, jax.random.key(0))
  model = transformer.Transformer(config)
  apply = jax.jit(lambda p, *args: model.apply({'params': p}, *args))
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, config.vocab_size, (batch, seq_len), np.int32)
  positions = np.broadcast_to(np.arange(seq_len, dtype=np.int32),
                              (batch, seq_len)).copy()
  tokens, positions, meta = jax.device_put((tokens, positions,
                                            _meta(batch, seq_len)))
  result = {'forward': _median_ms(
      lambda: apply(params, tokens, positions, (meta, meta))[0], runs)}
  # The decode step donates the cache, as a decode loop does: the scatter then
  # updates it in place instead of copying it every step.
  step_fn = jax.jit(lambda p, *args: model.apply({'params': p}, *args),
                    donate_argnums=(4,))
  for b in decode_batches:
    # Keys of a full cache are visible; the step writes the last entry.
    state = {'cache': cache_lib.init_cache(config, b, cache_len)}
    last = cache_len - 1
    inputs = jax.device_put((
        rng.integers(0, config.vocab_size, (b, 1), np.int32),
        np.full((b, 1), last, np.int32),
        (_meta(b, 1, last), _meta(b, cache_len))))
    index = jax.device_put(np.full((b, 1), last, np.int32))

    def decode_step():
      logits, state['cache'] = step_fn(params, *inputs, state['cache'], index)
      return logits
    result[f'decode_b{b}'] = _median_ms(decode_step, runs)
  return result


def _fits(config) -> tuple[bool, float]:
  """(whether float32 params, x3 for activations and copies, fit in memory,
  parameter GB in float32)."""
  gb = transformer.count_params(config) * 4 / 2**30
  try:
    available = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_AVPHYS_PAGES')
  except (ValueError, OSError):
    available = 0
  return 3 * gb * 2**30 < available, gb


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  batch, seq_len, cache_len, runs = (_BATCH.value, _SEQ_LEN.value, _CACHE_LEN.value,
                                     _RUNS.value)
  cli.check_positive(_BATCH, _SEQ_LEN, _CACHE_LEN, _RUNS)
  names = [n for n in _PRESETS.value.split(',') if n]
  unknown = sorted(set(names) - set(config_lib.PRESETS))
  if unknown:
    raise app.UsageError(f'unknown presets {unknown}; presets: '
                         f'{sorted(config_lib.PRESETS)}')
  try:
    decode_batches = tuple(int(b) for b in _DECODE_BATCHES.value.split(','))
  except ValueError:
    decode_batches = ()
  cli.check_flag(_DECODE_BATCHES, bool(decode_batches) and min(decode_batches) >= 1,
                 'comma-separated ints >= 1')

  print(f'jax {jax.__version__}, backend {jax.default_backend()}, '
        f'{os.cpu_count()} CPUs; forward [B={batch}, T={seq_len}], '
        f'decode [T=1, S={cache_len}]; median of {runs} runs, '
        'compile excluded\n')
  header = (['preset', 'params', 'dtype', f'forward B={batch} '
             f'T={seq_len} (ms)', 'forward tokens/s'] +
            [f'decode step B={b} (ms)' for b in decode_batches])
  print('| ' + ' | '.join(header) + ' |')
  print('|' + '---|' * len(header))
  for name in names:
    config = config_lib.get_config(name, dtype='float32', param_dtype='float32')
    fits, gb = _fits(config)
    if not fits:
      print(f'| {name} | skipped: {gb:.1f} GB of float32 weights do not fit |')
      continue
    ms = bench(config, batch=batch, seq_len=seq_len, cache_len=cache_len,
               decode_batches=decode_batches, runs=runs)
    row = [name, f'{transformer.count_params(config) / 1e6:.1f}M', 'float32',
           f'{ms["forward"]:.1f}',
           f'{batch * seq_len / ms["forward"] * 1e3:,.0f}']
    row += [f'{ms[f"decode_b{b}"]:.2f}' for b in decode_batches]
    print('| ' + ' | '.join(row) + ' |', flush=True)
  skipped = [n for n in config_lib.PUBLIC_PRESETS if n not in names]
  if skipped:
    print('\nNot run (public presets; name them in --presets to try): ' +
          ', '.join(f'{n} ({transformer.count_params(config_lib.PRESETS[n]) / 1e9:.2f}B)'
                    for n in skipped))


if __name__ == '__main__':
  cli.run(main)
