"""Stage-2 sampling throughput: samples/s at several batch sizes against batch 1.

    python scripts/bench_sampling.py --run workdir/synth_pasta
    python scripts/bench_sampling.py --run workdir/synth_pasta --batches 1,16,64 --prompts 32

Draws `--num_samples` samples for each of the first `--prompts` prompts of the
preference split through the run's interpreter at temperature 1, as a stage-2
round does (`pasta_jax.preference.sampling.sample_chunk`, per-request seeds),
once per batch size of `--batches`. Each batch size first runs the same requests
untimed (compilation, and the machine's first-call slowness), then `--repeats`
timed passes; the table has the best pass. Every batch size draws the same
samples (a request's seed does not depend on its batch), which the script checks,
so the rows time the same work: samples/s, decoded tokens/s (all threads), and the
ratio to batch 1.
"""

from __future__ import annotations

import time

from absl import app
from absl import flags

from pasta_jax import cli
from pasta_jax import errors

_RUN = flags.DEFINE_string('run', None, 'A PASTA training run (its workdir).')
_BATCHES = flags.DEFINE_list('batches', ['1', '16', '64'], 'Requests per interpreter call.')
_PROMPTS = flags.DEFINE_integer('prompts', 16, 'Preference prompts sampled.')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 4, 'Samples per prompt.')
_REPEATS = flags.DEFINE_integer('repeats', 1, 'Timed passes per batch size (best kept).')
_SPLIT = flags.DEFINE_string('split', 'preference', 'Dataset split of the prompts.')
_DECODER = cli.InterpreterFlags()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _RUN.value:
    raise app.UsageError('--run is required')
  cli.check_positive(_PROMPTS, _NUM_SAMPLES, _REPEATS)
  _DECODER.check()
  try:
    batches = [int(b) for b in _BATCHES.value]
  except ValueError as e:
    raise errors.UsageError(f'--batches: expected integers, got {_BATCHES.value}') from e
  if not batches or min(batches) < 1:
    raise errors.UsageError(f'--batches: expected integers >= 1, got {_BATCHES.value}')
  import jax  # pylint: disable=g-import-not-at-top
  from pasta_jax import runs  # pylint: disable=g-import-not-at-top
  from pasta_jax.data import records  # pylint: disable=g-import-not-at-top
  from pasta_jax.data import sources  # pylint: disable=g-import-not-at-top
  from pasta_jax.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  from pasta_jax.preference import sampling  # pylint: disable=g-import-not-at-top

  run = runs.load_run(_RUN.value)
  source = sources.data_sources(run.config.data, [_SPLIT.value])[_SPLIT.value]
  count = min(_PROMPTS.value, len(source))
  if not count:
    raise errors.DataError(f'split {_SPLIT.value!r} has no prompts; choose one with --split')
  prompts = [records.decode_text(source[i]['prompt']) for i in range(count)]
  interp = Interpreter.from_run(run, **_DECODER.overrides())
  ids = list(range(count))

  def sample(batch):
    return sampling.sample_chunk(interp, prompts, ids, _NUM_SAMPLES.value, seed=0,
                                 temperature=1.0, batch_size=batch)

  rows, reference = [], None
  for batch in batches:
    first = sample(batch)  # untimed: compiles this batch size's programs
    best = None
    for _ in range(_REPEATS.value):
      start = time.perf_counter()
      chunk = sample(batch)
      seconds = time.perf_counter() - start
      best = seconds if best is None else min(best, seconds)
    same = [s.ids for s in chunk.samples] == [s.ids for s in first.samples]
    if reference is None:
      reference = chunk
    same &= [s.ids for s in chunk.samples] == [s.ids for s in reference.samples]
    tokens = sum(s.tokens for s in chunk.samples)
    rows.append((batch, chunk.stats.calls, chunk.stats.samples, chunk.stats.padding, best,
                 tokens, same))
  print(f'\n{_RUN.value}: {count} {_SPLIT.value} prompts x {_NUM_SAMPLES.value} samples, '
        f'temperature 1, slots {interp.config.slots}, {jax.devices()[0].platform} '
        f'({jax.device_count()} device(s))\n')
  print('| batch | calls | samples | padding | seconds | samples/s | tokens/s | vs batch '
        f'{batches[0]} | same samples |')
  print('|' + '---|' * 9)
  base = rows[0][2] / rows[0][4]
  for batch, calls, samples, padding, seconds, tokens, same in rows:
    rate = samples / seconds
    print(f'| {batch} | {calls} | {samples} | {padding} | {seconds:.2f} | {rate:.2f} | '
          f'{tokens / seconds:.0f} | {rate / base:.2f}x | {"yes" if same else "NO"} |')
  if not all(row[-1] for row in rows):
    raise SystemExit('error: the batch sizes drew different samples (a bug: a request\'s '
                     'samples must not depend on its batch)')


if __name__ == '__main__':
  cli.run(main)
