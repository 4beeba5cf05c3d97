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

Baselines of docs/design.md section 9 are runs too: the APAR-style model is a
PASTA run (`--pasta apar=workdir/synth_apar`); `--sot NAME=DIR` decodes any run,
the sequential one included, Skeleton-of-Thought style
(`pasta_jax.skeleton_of_thought`: a skeleton, then one forced promise per point
and a sync) and tabulates it beside the PASTA runs; its --out/NAME also gets
sot.json (how many prompts were expanded from a skeleton and how many fell back
to the plain answer, with each skeleton), and the counts are printed:

  python -m pasta_jax.evaluate --pasta pasta=workdir/synth_pasta,apar=workdir/synth_apar \
      --sot sot=workdir/synth_sequential --sequential workdir/synth_sequential --out workdir/baselines

A prompt longer than a model takes (its largest prompt bucket, at most
--cache_size) is not decoded: its row in results.json has status
'prompt_too_long' and a `detail`, the table counts it ("4 (1 too long)") and
leaves it out of the means, and a warning on stderr says how many there were. If
no prompt fits, nothing is written (exit status 3). Bad flags exit with status 2
before anything is decoded (docs/training.md, "Bad input").

With a judge model (any OpenAI-compatible chat-completions service; docs/judge.md),
every PASTA answer is also compared with the sequential answer to its prompt, in
both orders, and the tables and results.json give PASTA's win rate per family
beside the exact checkers' quality:

  python -m pasta_jax.evaluate --pasta workdir/synth_pasta \
      --sequential workdir/synth_sequential --out workdir/eval \
      --judge=MODEL --judge_base_url=http://localhost:8000/v1

Its replies are cached in --judge_cache as they arrive; requests that fail after
their retries end the run with exit status 7 once everything is written (run the
same command again: only those are asked for).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Sequence

from absl import app
from absl import flags

from pasta_jax import cli
from pasta_jax import errors
from pasta_jax import judging
from pasta_jax.chat import flags as chat_flags

_PASTA = flags.DEFINE_list(
    'pasta', None, 'Workdir(s) of PASTA training runs: DIR or NAME=DIR, comma separated.')
_SOT = flags.DEFINE_list(
    'sot', None, 'Runs (PASTA or sequential) decoded Skeleton-of-Thought style: DIR or '
    'NAME=DIR, comma separated.')
_SEQUENTIAL = flags.DEFINE_string('sequential', None, 'Workdir of the sequential run.')
_OUT = flags.DEFINE_string('out', None, 'Output directory.')
_SPLIT = flags.DEFINE_string('split', 'test', 'Dataset split to evaluate on.')
_NUM_PROMPTS = flags.DEFINE_integer('num_prompts', None, 'Evaluate the first N prompts.')
_DECODER = cli.InterpreterFlags()
_CACHE_STAGES = flags.DEFINE_list(
    'cache_stages', None, 'Cache sizes the decode loop grows through before cache_size, '
    'e.g. 128,256 (default: the run config); an empty value: the whole cache throughout.')
_ROUND_WIDTHS = flags.DEFINE_list(
    'round_widths', None, 'Query widths PASTA rounds are compiled for, e.g. 1,2,4,8 '
    '(ending with the slot count) or 8 (every round runs all slots); default: the '
    "backend's (InterpreterConfig.round_widths).")

_JUDGE = chat_flags.ServiceFlags(
    'judge_', model_flag='judge', max_tokens=judging.DEFAULT_MAX_TOKENS,
    model_help='Judge model: compare every PASTA answer with the sequential one (both '
    'orders) through a chat-completions service and report the win rates (docs/judge.md).')
_JUDGE_CACHE = flags.DEFINE_string('judge_cache', None, "The judge's reply cache (default: "
                                   'OUT/judge_cache.jsonl).')
_JUDGE_TOP_LOGPROBS = flags.DEFINE_integer(
    'judge_top_logprobs', judging.DEFAULT_TOP_LOGPROBS, 'Alternatives per token whose '
    'log-probabilities weigh a verdict; 0: ask for none.')
_JUDGE_FIX_ATTEMPTS = flags.DEFINE_integer('judge_fix_attempts', 1, 'Requests for a verdict '
                                           'again after a reply that is not one.')


def parse_runs(values: Sequence[str], flag: str = 'pasta',
               taken: Sequence[str] = ()) -> dict[str, str]:
  """['a=DIR', 'DIR2'] -> {'a': 'DIR', basename(DIR2): 'DIR2'}; names must be
  unique, and not in `taken` (another flag's)."""
  runs = {}
  for value in values:
    name, sep, path = value.partition('=')
    if not sep:
      name, path = os.path.basename(os.path.normpath(value)), value
    if not name or not path:
      raise errors.UsageError(f'--{flag} entry {value!r}: expected DIR or NAME=DIR')
    if name in runs or name in taken:
      raise errors.UsageError(f'--{flag}: two runs are named {name!r}; name them NAME=DIR')
    runs[name] = path
  return runs


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not ((_PASTA.value or _SOT.value) and _SEQUENTIAL.value and _OUT.value):
    raise app.UsageError('--pasta (or --sot), --sequential and --out are required')
  runs = parse_runs(_PASTA.value or [])
  sot_runs = parse_runs(_SOT.value or [], 'sot', taken=list(runs))
  cli.check_positive(_NUM_PROMPTS)
  _DECODER.check()
  cli.check_flag(_OUT, not os.path.exists(_OUT.value) or os.path.isdir(_OUT.value),
                 'a directory (this is a file)')
  judge = _judge_settings()
  from pasta_jax import comparison  # pylint: disable=g-import-not-at-top
  from pasta_jax.data import sources as sources_lib  # pylint: disable=g-import-not-at-top
  overrides = _DECODER.overrides()
  for flag in (_CACHE_STAGES, _ROUND_WIDTHS):
    if flag.value is not None:
      try:
        overrides[flag.name] = tuple(int(v) for v in flag.value)
      except ValueError as e:
        raise errors.UsageError(f'--{flag.name}: expected integers, got {flag.value}') from e
  try:
    pastas, baseline, pasta_runs = comparison.load_runs(list(runs.values()),
                                                        _SEQUENTIAL.value, **overrides)
    sots = _skeleton_of_thought(sot_runs, overrides)
  except errors.UserError:
    raise
  except ValueError as e:  # a run of the wrong mode, or interpreter settings out of range
    raise errors.UsageError(str(e)) from e
  data = (pasta_runs or [sot.run for sot in sots.values()])[0].config.data
  source = sources_lib.data_sources(data, [_SPLIT.value])[_SPLIT.value]
  if not len(source):  # pylint: disable=g-explicit-length-test
    raise errors.DataError(f'split {_SPLIT.value!r} of the dataset has no prompts; choose '
                           'another with --split')
  rows = comparison.evaluate_many({**dict(zip(runs, pastas)), **sots}, baseline, source,
                                  num_prompts=_NUM_PROMPTS.value,
                                  progress=True)
  runs = {**runs, **sot_runs}
  _check_decoded(rows)
  judgements = _judge(judge, rows) if judge is not None else []
  summaries = {name: comparison.summarize(rows[name]) for name in runs}
  if len(runs) == 1:
    summary = summaries[next(iter(runs))]
    paths = comparison.write_outputs(rows[next(iter(runs))], summary, _OUT.value)
    print(comparison.markdown_table(summary))
    paths.update(_sot_reports(sots, {name: _OUT.value for name in sots}))
  else:
    paths = {}
    for name in runs:
      out = os.path.join(_OUT.value, name)
      comparison.write_outputs(rows[name], summaries[name], out)
      print(f'\n{name}:\n{comparison.markdown_table(summaries[name])}')
      paths[name] = out
    paths.update(_sot_reports(sots, {name: os.path.join(_OUT.value, name) for name in sots}))
    settings = {name: comparison.position_setting(run, interp)
                for name, run, interp in zip(runs, pasta_runs, pastas)}
    settings.update({name: 'skeleton-of-thought' for name in sots})
    table = comparison.comparison_table(summaries, settings)
    paths['comparison'] = os.path.join(_OUT.value, 'comparison.md')
    with open(paths['comparison'], 'w', encoding='utf-8') as f:
      f.write(table + '\n')
    paths['pareto'] = comparison.pareto_plot(summaries, os.path.join(_OUT.value, 'pareto.png'))
    print('\n' + table)
  print('\n' + '\n'.join(f'{name}: {path}' for name, path in paths.items()))
  judging.check_failed(judgements, 'their rows have judge.outcome "failed" in results.json')


def _judge_settings() -> chat_flags.Settings | None:
  """The judge's service settings (None without --judge); UsageErrors before decoding."""
  if not _JUDGE.model.value:
    return None
  for flag in (_JUDGE_TOP_LOGPROBS, _JUDGE_FIX_ATTEMPTS):
    cli.check_flag(flag, flag.value >= 0, 'an int >= 0')
  settings = _JUDGE.settings()
  settings.check('--judge')
  return settings


def _judge(settings: chat_flags.Settings, rows: dict) -> list[judging.Judgement]:
  """Judges every run's decoded answers (`comparison.judge_rows`)."""
  from pasta_jax import comparison  # pylint: disable=g-import-not-at-top
  from pasta_jax.chat import service as service_lib  # pylint: disable=g-import-not-at-top
  service_lib.quiet_client_logs()
  cache = _JUDGE_CACHE.value or os.path.join(_OUT.value, 'judge_cache.jsonl')
  os.makedirs(_OUT.value, exist_ok=True)
  with judging.opened(settings, cache, top_logprobs=_JUDGE_TOP_LOGPROBS.value,
                      fix_attempts=_JUDGE_FIX_ATTEMPTS.value) as judge:
    judgements = comparison.judge_rows(judge, rows, concurrency=settings.concurrency,
                                       progress=True)
    print(f'judge {settings.model}: {judge.service.counters.summary()}')
  return judgements


def _skeleton_of_thought(sot_runs: dict[str, str], overrides: dict) -> dict:
  """Name -> `SkeletonOfThought` of each --sot run."""
  from pasta_jax import runs as runs_lib  # pylint: disable=g-import-not-at-top
  from pasta_jax import skeleton_of_thought  # pylint: disable=g-import-not-at-top
  return {name: skeleton_of_thought.SkeletonOfThought(runs_lib.load_run(workdir), **overrides)
          for name, workdir in sot_runs.items()}


def _sot_reports(sots: dict, out_dirs: dict[str, str]) -> dict[str, str]:
  """Writes each --sot run's sot.json and prints its outcome counts."""
  paths = {}
  for name, sot in sots.items():
    paths[f'{name} (sot.json)'] = os.path.join(out_dirs[name], 'sot.json')
    with open(paths[f'{name} (sot.json)'], 'w', encoding='utf-8') as f:
      json.dump(sot.report(), f, indent=1)
    print(f'\n{name}: {sot.summary_line()}')
  return paths


def _check_decoded(rows: dict) -> None:
  """DataError when a run decoded no prompt; a warning on stderr when some were not."""
  split = f'split {_SPLIT.value!r}'
  for name, run_rows in rows.items():
    skipped = [r for r in run_rows if not r.decoded]
    if not skipped:
      continue
    run = f'{name}: ' if len(rows) > 1 else ''
    if len(skipped) == len(run_rows):
      raise errors.DataError(f'{run}none of the {len(run_rows)} prompts of {split} was '
                             f'decoded (prompt_too_long); the first: {skipped[0].detail}')
    print(f'warning: {run}{len(skipped)} of {len(run_rows)} prompts of {split} were too '
          'long and not decoded (status prompt_too_long in results.json, counted apart in '
          f'the table); the first: {skipped[0].detail}', file=sys.stderr)

if __name__ == '__main__':
  cli.run(main)
