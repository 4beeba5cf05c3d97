r"""Times benchmark scripts on two revisions side by side; prints old, new and new/old.

  python scripts/compare_revisions.py --base=HEAD~3 \
      --bench='scripts/bench_model.py --presets=tiny,small --runs=10'

A refactor must not change speed: this checks out `--base` into a temporary git
worktree, then runs each `--bench` command there and in this checkout, in turn,
`--repeats` times (interleaved, so a noisy host slows both alike). Every
Markdown table the command prints is read; each numeric cell (the first number
in it: '1.23 ms', '1.05x', '12,345 tok/s') is taken as the median over the
repeats, and one table per command lists old, new and new/old for every cell.
`--base_bench` gives the old revision's command where its flags differ (e.g. a
script that moved from argparse to absl flags).
"""

from __future__ import annotations

import collections
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
from typing import Sequence

from absl import app
from absl import flags

_BASE = flags.DEFINE_string('base', None, 'The old revision (any git revision).')
_BENCH = flags.DEFINE_multi_string(
    'bench', [], 'A benchmark command run with this checkout\'s python (repeatable).')
_BASE_BENCH = flags.DEFINE_multi_string(
    'base_bench', [], 'The same commands for the old revision, in the same order '
    '(default: the --bench commands).')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Interleaved runs of each command per revision.')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NUMBER = re.compile(r'-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?')

Cells = dict[tuple[int, str, str], float]


def table_cells(text: str) -> Cells:
  """{(table index, row label, column header): number} of every Markdown table.

  The row label is the row's first cell; where labels repeat in a table, the
  row's number within the table is added to keep the keys apart.
  """
  cells: Cells = {}
  table, header, seen = -1, None, collections.Counter()
  for line in text.splitlines() + ['']:
    if not line.startswith('|'):
      header = None
      continue
    row = [c.strip() for c in line.strip().strip('|').split('|')]
    if header is None:
      table, header, seen = table + 1, row, collections.Counter()
      continue
    if all(set(c) <= set('-: ') for c in row):
      continue
    label = row[0]
    seen[label] += 1
    if seen[label] > 1:
      label = f'{label} #{seen[label]}'
    for column, cell in zip(header[1:], row[1:]):
      match = _NUMBER.search(cell)
      if match:
        cells[(table, label, column)] = float(match.group().replace(',', ''))
  return cells


def run(command: str, checkout: str) -> str:
  """stdout of `command` run in `checkout` with that checkout's package first."""
  env = dict(os.environ, PYTHONPATH=checkout)
  args = shlex.split(command)
  if args[0].endswith('.py'):
    args = [sys.executable] + args
  result = subprocess.run(args, cwd=checkout, env=env, capture_output=True, text=True)
  if result.returncode:
    raise RuntimeError(f'{command!r} failed in {checkout} (exit {result.returncode}):\n'
                       f'{result.stderr[-3000:]}')
  return result.stdout


def compare(old: Sequence[Cells], new: Sequence[Cells]) -> list[str]:
  """Markdown rows: cell, old median, new median, new/old."""
  lines = ['| table | row | column | old | new | new/old |', '|---|---|---|---|---|---|']
  for key in old[0]:
    if not all(key in runs for runs in list(old) + list(new)):
      continue
    before = statistics.median(runs[key] for runs in old)
    after = statistics.median(runs[key] for runs in new)
    ratio = f'{after / before:.3f}' if before else '-'
    lines.append(f'| {key[0]} | {key[1]} | {key[2]} | {before:g} | {after:g} | {ratio} |')
  return lines


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  if not _BASE.value or not _BENCH.value:
    raise app.UsageError('--base and at least one --bench are required')
  base_benches = _BASE_BENCH.value or _BENCH.value
  if len(base_benches) != len(_BENCH.value):
    raise app.UsageError('give one --base_bench per --bench, or none')
  revision = subprocess.run(['git', 'rev-parse', '--short', _BASE.value], cwd=ROOT,
                            capture_output=True, text=True)
  if revision.returncode:
    raise app.UsageError(f'--base={_BASE.value}: not a revision of {ROOT}')
  with tempfile.TemporaryDirectory() as tmp:
    base_dir = os.path.join(tmp, 'base')
    subprocess.run(['git', 'worktree', 'add', '--detach', '-q', base_dir, _BASE.value],
                   cwd=ROOT, check=True)
    try:
      for new_cmd, old_cmd in zip(_BENCH.value, base_benches):
        old, new = [], []
        for i in range(_REPEATS.value):
          print(f'{new_cmd}: run {i + 1}/{_REPEATS.value}', file=sys.stderr, flush=True)
          old.append(table_cells(run(old_cmd, base_dir)))
          new.append(table_cells(run(new_cmd, ROOT)))
        print(f'\n## {new_cmd}\n\nold = {revision.stdout.strip()} ({old_cmd}), new = this '
              f'checkout; medians of {_REPEATS.value} interleaved runs\n')
        print('\n'.join(compare(old, new)))
    finally:
      subprocess.run(['git', 'worktree', 'remove', '--force', base_dir], cwd=ROOT)


if __name__ == '__main__':
  app.run(main)
