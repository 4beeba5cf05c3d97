r"""Evaluate a PASTA model against its sequential baseline.

  python -m pasta_jax.evaluate --pasta workdir/synth_pasta \
      --sequential workdir/synth_sequential --out workdir/eval

Decodes the test split with both models through the interpreter (batch 1,
greedy, compile time excluded) and writes to --out: results.json (per prompt and
per family), table.md (printed too), pareto.png (quality against speedup),
speedups.png (per-prompt speedup distribution), timeline.png (which thread wrote
which token in which round, for one answer), and alpaca_eval_{pasta,sequential}.json
(AlpacaEval's model-outputs format, for a judge elsewhere).
"""

from __future__ import annotations

from typing import Sequence

from absl import app
from absl import flags

_PASTA = flags.DEFINE_string('pasta', None, 'Workdir of the PASTA training run.')
_SEQUENTIAL = flags.DEFINE_string('sequential', None, 'Workdir of the sequential run.')
_OUT = flags.DEFINE_string('out', None, 'Output directory.')
_SPLIT = flags.DEFINE_string('split', 'test', 'Dataset split to evaluate on.')
_NUM_PROMPTS = flags.DEFINE_integer('num_prompts', None, 'Evaluate the first N prompts.')
_SLOTS = flags.DEFINE_integer('slots', None, 'PASTA thread slots (default: the run config).')
_MAX_STEPS = flags.DEFINE_integer('max_steps', None, 'Decode rounds per request.')
_CACHE_SIZE = flags.DEFINE_integer(
    'cache_size', None, 'KV-cache entries per request (default: the run config).')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not (_PASTA.value and _SEQUENTIAL.value and _OUT.value):
    raise app.UsageError('--pasta, --sequential and --out are required')
  from pasta_jax import evaluation  # pylint: disable=g-import-not-at-top
  from pasta_jax.training import inputs  # pylint: disable=g-import-not-at-top
  overrides = {k: v for k, v in (('slots', _SLOTS.value), ('max_steps', _MAX_STEPS.value),
                                 ('cache_size', _CACHE_SIZE.value)) if v is not None}
  pasta, baseline, run = evaluation.load_pair(_PASTA.value, _SEQUENTIAL.value, **overrides)
  source = inputs.data_sources(run.config.data, [_SPLIT.value])[_SPLIT.value]
  rows = evaluation.evaluate(pasta, baseline, source, num_prompts=_NUM_PROMPTS.value,
                             progress=evaluation.print_progress)
  summary = evaluation.summarize(rows)
  paths = evaluation.write_outputs(rows, summary, _OUT.value)
  print(evaluation.markdown_table(summary))
  print('\n' + '\n'.join(f'{name}: {path}' for name, path in paths.items()))


if __name__ == '__main__':
  app.run(main)
