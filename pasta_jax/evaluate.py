r"""Evaluate PASTA models against their sequential baseline.

  python -m pasta_jax.evaluate --pasta workdir/synth_pasta \
      --sequential workdir/synth_sequential --out workdir/eval

Decodes the test split with both models through the interpreter (batch 1, greedy,
compile time excluded; the library is `pasta_jax.comparison`) and writes to --out:
results.json (per prompt and per family), table.md (printed too), pareto.png
(quality against speedup), speedups.png (per-prompt speedup distribution),
timeline.png (which thread wrote which token in which round, for one answer), and
alpaca_eval_{pasta,sequential}.json (AlpacaEval's model-outputs format, for a judge
elsewhere).

Several PASTA runs (e.g. the position-strategy ablation) are compared in one pass:

  python -m pasta_jax.evaluate \
      --pasta predicted=workdir/synth_pasta,fixed=workdir/synth_fixed,oracle=workdir/synth_oracle \
      --sequential workdir/synth_sequential --out workdir/ablation

The baseline decodes each prompt once and every PASTA run decodes it right after.
Each run gets the outputs above in --out/NAME; --out itself gets comparison.md (one
row per run, printed too) and pareto.png (one point per run).
"""

from __future__ import annotations

import os
from typing import Sequence

from absl import app
from absl import flags

_PASTA = flags.DEFINE_list(
    'pasta', None, 'Workdir(s) of PASTA training runs: DIR or NAME=DIR, comma separated.')
_SEQUENTIAL = flags.DEFINE_string('sequential', None, 'Workdir of the sequential run.')
_OUT = flags.DEFINE_string('out', None, 'Output directory.')
_SPLIT = flags.DEFINE_string('split', 'test', 'Dataset split to evaluate on.')
_NUM_PROMPTS = flags.DEFINE_integer('num_prompts', None, 'Evaluate the first N prompts.')
_SLOTS = flags.DEFINE_integer('slots', None, 'PASTA thread slots (default: the run config).')
_MAX_STEPS = flags.DEFINE_integer('max_steps', None, 'Decode rounds per request.')
_CACHE_SIZE = flags.DEFINE_integer(
    'cache_size', None, 'KV-cache entries per request (default: the run config).')
_CACHE_STAGES = flags.DEFINE_list(
    'cache_stages', None, 'Cache sizes the decode loop grows through before cache_size, '
    'e.g. 128,256 (default: the run config); an empty value: the whole cache throughout.')
_ROUND_WIDTHS = flags.DEFINE_list(
    'round_widths', None, 'Query widths PASTA rounds are compiled for, e.g. 1,2,4,8 '
    '(ending with the slot count) or 8 (every round runs all slots); default: the '
    "backend's (InterpreterConfig.round_widths).")


def parse_runs(values: Sequence[str]) -> dict[str, str]:
  """['a=DIR', 'DIR2'] -> {'a': 'DIR', basename(DIR2): 'DIR2'}; names must be unique."""
  runs = {}
  for value in values:
    name, sep, path = value.partition('=')
    if not sep:
      name, path = os.path.basename(os.path.normpath(value)), value
    if not name or not path:
      raise app.UsageError(f'--pasta entry {value!r}: expected DIR or NAME=DIR')
    if name in runs:
      raise app.UsageError(f'--pasta: two runs are named {name!r}; name them NAME=DIR')
    runs[name] = path
  return runs


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not (_PASTA.value and _SEQUENTIAL.value and _OUT.value):
    raise app.UsageError('--pasta, --sequential and --out are required')
  runs = parse_runs(_PASTA.value)
  from pasta_jax import comparison  # pylint: disable=g-import-not-at-top
  from pasta_jax.data import sources as sources_lib  # pylint: disable=g-import-not-at-top
  overrides = {k: v for k, v in (('slots', _SLOTS.value), ('max_steps', _MAX_STEPS.value),
                                 ('cache_size', _CACHE_SIZE.value)) if v is not None}
  for flag in (_CACHE_STAGES, _ROUND_WIDTHS):
    if flag.value is not None:
      try:
        overrides[flag.name] = tuple(int(v) for v in flag.value)
      except ValueError as e:
        raise app.UsageError(f'--{flag.name}: expected integers, got {flag.value}') from e
  try:
    pastas, baseline, pasta_runs = comparison.load_runs(list(runs.values()),
                                                        _SEQUENTIAL.value, **overrides)
  except ValueError as e:  # a run of the wrong mode, or interpreter settings out of range
    raise app.UsageError(str(e)) from e
  source = sources_lib.data_sources(pasta_runs[0].config.data, [_SPLIT.value])[_SPLIT.value]
  rows = comparison.evaluate_many(dict(zip(runs, pastas)), baseline, source,
                                  num_prompts=_NUM_PROMPTS.value,
                                  progress=True)
  summaries = {name: comparison.summarize(rows[name]) for name in runs}
  if len(runs) == 1:
    summary = summaries[next(iter(runs))]
    paths = comparison.write_outputs(rows[next(iter(runs))], summary, _OUT.value)
    print(comparison.markdown_table(summary))
  else:
    paths = {}
    for name in runs:
      out = os.path.join(_OUT.value, name)
      comparison.write_outputs(rows[name], summaries[name], out)
      print(f'\n{name}:\n{comparison.markdown_table(summaries[name])}')
      paths[name] = out
    settings = {name: comparison.position_setting(run, interp)
                for name, run, interp in zip(runs, pasta_runs, pastas)}
    table = comparison.comparison_table(summaries, settings)
    paths['comparison'] = os.path.join(_OUT.value, 'comparison.md')
    with open(paths['comparison'], 'w', encoding='utf-8') as f:
      f.write(table + '\n')
    paths['pareto'] = comparison.pareto_plot(summaries, os.path.join(_OUT.value, 'pareto.png'))
    print('\n' + table)
  print('\n' + '\n'.join(f'{name}: {path}' for name, path in paths.items()))


if __name__ == '__main__':
  app.run(main)
