r"""Forced decoding: PASTA against sequential speed on any preset, without training.

  python scripts/bench_forced.py                                  # tiny, 32 prompts
  python scripts/bench_forced.py --preset base100m --prompts 64
  python scripts/bench_forced.py --preset gemma3_1b --dtype bfloat16     # a GPU

The first --prompts examples of the synthetic test split are decoded by a model
of --preset with random weights, teacher-forced token for token
(`pasta_jax.benchmarking`): the reference annotation through the PASTA
interpreter (every thread's tokens, EOS and each `</async>` included) and its
stripped form through sequential mode. Each decode is checked to have written
exactly the reference (an error says which prompt did not). Both decoders thus
do the rounds a model that wrote the reference would make them do, so the
speedups below measure the decoders alone.

As `python -m pasta_jax.evaluate` does (`pasta_jax.comparison`): batch 1 per
prompt, greedy, decode time without the prefill and without compilation; the
theoretical speedup of a prompt is its sequential tokens (= rounds) over its
PASTA rounds, the wall-clock speedup its sequential over its PASTA decode time,
both geometric means over the prompts, and realised / theoretical their ratio.
Each prompt's two decodes run --runs times in turn (after one untimed warm-up)
and each keeps its minimum. Prints per-prompt and per-family Markdown tables and
the pooled ratios (sums over the prompts).
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
import numpy as np
from tqdm import auto as tqdm_auto

from pasta_jax import benchmarking
from pasta_jax import cli
from pasta_jax import comparison
from pasta_jax import errors
from pasta_jax.data import synthetic
from pasta_jax.interpreter import results as results_lib

_DECODER = benchmarking.DecoderFlags()
_PROMPTS = flags.DEFINE_integer('prompts', 32, 'Test-split examples to decode (every '
                                'family in turn).')

MODES = ('sequential', 'pasta')


def bench_prompt(interps, forced, prompt, index, runs):
  """One prompt decoded by both interpreters; a `comparison.PromptResult`."""
  last = {}

  def timed(mode):
    def run():
      result, timing = interps[mode].generate_timed(prompt.prompt, forced=forced[mode][index])
      last[mode] = result
      return timing.decode_seconds, timing.prefill_seconds
    return run

  best = benchmarking.interleaved({mode: timed(mode) for mode in MODES}, runs,
                                  own_timing=True)
  seq, pasta = last['sequential'], last['pasta']
  decoded = results_lib.PROMPT_TOO_LONG not in (seq.status, pasta.status)
  if decoded:
    benchmarking.check_forced(seq, prompt.plain, index, 'sequential')
    benchmarking.check_forced(pasta, prompt.response, index, 'PASTA')
  example = prompt.example

  def quality(result):
    return synthetic.check(example.family, example.facts, result.text) if decoded else np.nan

  return comparison.PromptResult(
      prompt=example.prompt, family=example.family, baseline_text=seq.text,
      baseline_quality=quality(seq), baseline_tokens=seq.total_tokens,
      baseline_decode_seconds=best['sequential'][0],
      baseline_prefill_seconds=best['sequential'][1], pasta_text=pasta.text,
      pasta_annotated=pasta.annotated, pasta_quality=quality(pasta),
      pasta_tokens=pasta.total_tokens, pasta_steps=pasta.steps,
      pasta_decode_seconds=best['pasta'][0], pasta_prefill_seconds=best['pasta'][1],
      pasta_status=pasta.status, baseline_status=seq.status,
      detail='; '.join(r.detail for r in (pasta, seq) if r.detail))


def prompt_table(rows, prompts) -> str:
  lines = ['| # | family | prompt tokens | sequential rounds | PASTA rounds | tokens: seq / '
           'PASTA | theoretical | decode ms: seq / PASTA | wall-clock | realised / '
           'theoretical |', '|' + '---|' * 10]
  for i, (row, prompt) in enumerate(zip(rows, prompts)):
    if not row.decoded:
      lines.append(f'| {i} | {row.family} | {len(prompt.prompt)} | prompt too long |' +
                   ' |' * 6)
      continue
    lines.append(
        f'| {i} | {row.family} | {len(prompt.prompt)} | {row.baseline_tokens} | '
        f'{row.pasta_steps} | {row.baseline_tokens} / {row.pasta_tokens} | '
        f'{row.theoretical_speedup:.2f}x | {1e3 * row.baseline_decode_seconds:.1f} / '
        f'{1e3 * row.pasta_decode_seconds:.1f} | {row.wallclock_speedup:.2f}x | '
        f'{row.wallclock_speedup / row.theoretical_speedup:.2f} |')
  return '\n'.join(lines)


def pooled_line(rows) -> str:
  """The ratios of the sums over the decoded prompts."""
  rows = [r for r in rows if r.decoded]
  rounds = sum(r.baseline_tokens for r in rows) / sum(r.pasta_steps for r in rows)
  seconds = (sum(r.baseline_decode_seconds for r in rows)
             / sum(r.pasta_decode_seconds for r in rows))
  return (f'pooled over {len(rows)} prompts: sequential rounds / PASTA rounds '
          f'{rounds:.2f}x, sequential / PASTA decode time {seconds:.2f}x, realised / '
          f'theoretical {seconds / rounds:.2f}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  _DECODER.check()
  cli.check_positive(_PROMPTS)
  tok = benchmarking.synthetic_tokenizer()
  config, params = _DECODER.model(tok)
  interps = _DECODER.interpreters(config, params, tok)
  prompts = benchmarking.forced_workload(tok, _PROMPTS.value)
  forced = {mode: benchmarking.forcing_rows(prompts, interps[mode]) for mode in MODES}
  print(_DECODER.describe(config) + '\n')
  rows = [bench_prompt(interps, forced, prompt, i, _DECODER.runs.value)
          for i, prompt in enumerate(tqdm_auto.tqdm(prompts, desc='prompts', unit='prompt'))]
  skipped = sum(not r.decoded for r in rows)
  if skipped == len(rows):
    raise errors.DataError(f'none of the {len(rows)} prompts fits the interpreters '
                           f'(--cache_size={_DECODER.cache_size.value}): {rows[0].detail}')
  if skipped:
    print(f'warning: {skipped} of {len(rows)} prompts were too long and not decoded; the '
          f'first: {next(r.detail for r in rows if not r.decoded)}', file=sys.stderr)
  decoded = len(rows) - skipped
  print(prompt_table(rows, prompts) + '\n')
  print(comparison.markdown_table(comparison.summarize(rows)) + '\n')
  print(pooled_line(rows))
  print(f'forced decodes verified: {decoded} PASTA answers and {decoded} plain answers '
        'are the references, token for token')


if __name__ == '__main__':
  cli.run(main)
