r"""Batched throughput: PASTA against sequential mode at batch 1, 4, 16 and 64.

  python scripts/bench_batch.py                                   # tiny
  python scripts/bench_batch.py --preset small --batches 1,4,16,64 --runs 3
  python scripts/bench_batch.py --preset gemma3_1b --dtype bfloat16    # a GPU

The workload of scripts/bench_forced.py, batched: the first --requests examples
of the synthetic test split (default: the largest batch), decoded by a model of
--preset with random weights, teacher-forced (`pasta_jax.benchmarking`): the
reference annotations through the PASTA interpreter (--slots thread slots per
request) and their stripped forms through sequential mode, so that both modes
write the same answers and every decode is checked to be the reference. At
each batch size B the requests are decoded in order, B at a time, each batch by
one `Interpreter.generate_batch` call (prefill and every round until its last
request stops; compilation excluded), timed --runs times in turn with every
other batch of every mode and size (after one untimed warm-up), keeping each
batch's minimum.

Columns, per batch size and mode:
  requests/s        requests / the summed time of their batches.
  answer tokens/s   tokens of the plain answers (EOS included) per second: the
                    same text in both modes, so the useful throughput (the
                    crossover below is read on it).
  sampled tokens/s  the tokens the mode sampled (PASTA's include its tags and
                    topics) per second.
  rounds / batch    decode rounds of a batch (its slowest request), the mean.
  latency           a request's latency is the wall time of the batch call that
                    decoded it: `generate_batch` returns every request of a
                    batch together, so all B of them wait for the slowest;
                    mean, p50 and p90 over the requests.
"""

from __future__ import annotations

import time

from absl import app
from absl import flags
import jax
import numpy as np

from pasta_jax import benchmarking
from pasta_jax import cli
from pasta_jax import errors

_DECODER = benchmarking.DecoderFlags()
_BATCHES = flags.DEFINE_list('batches', ['1', '4', '16', '64'], 'Batch sizes.')
_REQUESTS = flags.DEFINE_integer('requests', None, 'Test-split examples to decode at every '
                                 'batch size (a multiple of each; default: the largest).')

MODES = ('sequential', 'pasta')


def _batch_sizes() -> list[int]:
  try:
    sizes = [int(b) for b in _BATCHES.value]
  except ValueError:
    sizes = []
  cli.check_flag(_BATCHES, bool(sizes) and min(sizes) >= 1 and len(set(sizes)) == len(sizes),
                 'distinct ints >= 1, comma separated')
  return sorted(sizes)


def bench(interps, prompts, forced, sizes, runs):
  """{(mode, B): [(seconds, sampled tokens, rounds) per batch]}, each batch verified."""
  fns, verified = {}, set()
  for size in sizes:
    for mode in MODES:
      interp = interps[mode]
      for start in range(0, len(prompts), size):
        chunk = prompts[start:start + size]
        try:
          batch = interp.prepare([p.prompt for p in chunk],
                                 forced=forced[mode][start:start + size])
        except ValueError as e:  # a prompt longer than the largest bucket
          raise errors.UsageError(f'{e}; raise --cache_size') from e
        fns[(mode, size, start)] = _timed(interp, batch, chunk, start, mode, verified)
  best = benchmarking.interleaved(fns, runs, own_timing=True, progress='batched passes')
  out = {}
  for (mode, size, _), measured in best.items():
    out.setdefault((mode, size), []).append(measured)
  return out


def _timed(interp, batch, chunk, start, mode, verified):
  """A function that runs one batch and returns (seconds, sampled tokens, rounds);
  the first call checks every request wrote its reference (outside the timing)."""
  key = (mode, batch.size, start)

  def run():
    begin = time.perf_counter()
    state = interp.generate_batch(batch)
    jax.block_until_ready(state.out_len)
    seconds = time.perf_counter() - begin
    if key not in verified:
      for i, (result, prompt) in enumerate(zip(interp.results(state), chunk)):
        benchmarking.check_forced(result, prompt.plain if mode == 'sequential'
                                  else prompt.response, start + i, mode)
      verified.add(key)
    return seconds, float(np.sum(state.out_len)), float(np.max(state.steps))
  return run


def table(measured, prompts, sizes) -> tuple[str, dict]:
  answer_tokens = sum(len(p.plain) for p in prompts)
  lines = ['| batch | mode | requests/s | answer tokens/s | sampled tokens/s | rounds / batch '
           '| latency ms: mean / p50 / p90 |', '|' + '---|' * 7]
  throughput = {}
  for size in sizes:
    for mode in MODES:
      batches = measured[(mode, size)]
      seconds = sum(b[0] for b in batches)
      latency = 1e3 * np.repeat([b[0] for b in batches], size)
      throughput[(mode, size)] = answer_tokens / seconds
      lines.append(
          f'| {size} | {mode} | {len(prompts) / seconds:.2f} | {answer_tokens / seconds:.0f} | '
          f'{sum(b[1] for b in batches) / seconds:.0f} | '
          f'{np.mean([b[2] for b in batches]):.1f} | {latency.mean():.1f} / '
          f'{np.percentile(latency, 50):.1f} / {np.percentile(latency, 90):.1f} |')
  return '\n'.join(lines), throughput


def crossover(throughput, sizes) -> str:
  ratios = {size: throughput[('pasta', size)] / throughput[('sequential', size)]
            for size in sizes}
  text = ', '.join(f'{ratios[size]:.2f} at batch {size}' for size in sizes)
  below = [size for size in sizes if ratios[size] < 1]
  if below:
    return (f"PASTA's answer tokens/s falls below sequential's at batch {below[0]} "
            f'(PASTA / sequential: {text})')
  return f"PASTA's answer tokens/s stays above sequential's at every batch (PASTA / " \
         f'sequential: {text})'


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  _DECODER.check()
  cli.check_positive(_REQUESTS)
  sizes = _batch_sizes()
  requests = _REQUESTS.value or sizes[-1]
  if any(requests % size for size in sizes):
    raise errors.UsageError(f'{requests} requests (--requests) are not a multiple of every '
                            f'batch size (--batches={",".join(map(str, sizes))})')
  tok = benchmarking.synthetic_tokenizer()
  config, params = _DECODER.model(tok)
  interps = _DECODER.interpreters(config, params, tok)
  prompts = benchmarking.forced_workload(tok, requests)
  forced = {mode: benchmarking.forcing_rows(prompts, interps[mode]) for mode in MODES}
  print(_DECODER.describe(config) + f'; {requests} requests\n')
  measured = bench(interps, prompts, forced, sizes, _DECODER.runs.value)
  text, throughput = table(measured, prompts, sizes)
  print(text + '\n')
  print(crossover(throughput, sizes))
  print(f'forced decodes verified: all {requests} requests wrote their references in both '
        'modes at every batch size')


if __name__ == '__main__':
  cli.run(main)
