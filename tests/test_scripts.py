"""Smoke runs of the benchmark scripts on tiny settings: they run end to end and
print their tables (the numbers themselves are for docs/benchmarks.md)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pasta_jax import benchmarking
from pasta_jax import layout

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # over 25 s on 2 cores: the newest Python only (CI's budget)
def test_bench_interpreter_runs_and_its_decoders_agree():
  out = subprocess.run(
      [sys.executable, 'scripts/bench_interpreter.py', '--presets', 'tiny', '--tokens', '8',
       '--runs', '1', '--slots', '2'],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=True).stdout
  assert '| active slots | round (ms) |' in out
  assert 'interpreter, sequential mode (S=1)' in out
  assert 'sequential mode and the hand loop wrote the same tokens: True' in out
  assert '| one interleaved cache per request (pasta_jax) | 84727 | 1.00 |' in out


def test_bench_train_runs_and_measures_the_pipeline_beside_the_step():
  out = subprocess.run(
      [sys.executable, 'scripts/bench_train.py', '--presets', 'tiny', '--batch', '2',
       '--seq_len', '128', '--runs', '1', '--pipeline_batches', '4'],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=True).stdout
  assert '| pipeline examples/s | pipeline tokens/s | pipeline / step |' in out
  assert out.strip().splitlines()[-1].startswith('| tiny |')


def _run_script(*args):
  """A script's stdout, its programs compiled without XLA's optimizations (tiny
  settings: compile time dominates; the outputs are the same programs' outputs)."""
  env = {**os.environ, 'JAX_DISABLE_MOST_OPTIMIZATIONS': '1'}
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=600, check=True, env=env).stdout


def _table_rows(out, header):
  """The cells of the rows of the Markdown table whose header starts with `header`."""
  lines = out.splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith(header))
  rows = []
  for line in lines[start + 2:]:
    if not line.startswith('|'):
      break
    rows.append([cell.strip() for cell in line.strip('|').split('|')])
  return rows


@pytest.fixture(scope='module')
def workload():
  """The first three forced prompts, each with its sequential rounds (its plain
  tokens), the PASTA rounds of the ideal schedule with 4 slots
  (`layout.decode_steps`) and the tokens PASTA samples."""
  tok = benchmarking.synthetic_tokenizer()
  return [(p, len(p.plain), layout.decode_steps(p.response, tok.control, slots=4),
           sum(len(t) for t in p.threads(tok.control, sequential=False)))
          for p in benchmarking.forced_workload(tok, 3)]


@pytest.mark.slow  # about 30 s on 2 cores (compiling both decoders)
def test_bench_forced_reports_the_ideal_rounds_of_verified_forced_decodes(workload):
  out = _run_script('scripts/bench_forced.py', '--preset', 'tiny', '--prompts', '3',
                    '--runs', '1', '--slots', '4', '--cache_size', '256')
  rows = _table_rows(out, '| # | family |')
  assert len(rows) == 3
  for row, (prompt, seq_rounds, pasta_rounds, pasta_tokens) in zip(rows, workload):
    assert row[1] == prompt.example.family
    assert (int(row[3]), int(row[4])) == (seq_rounds, pasta_rounds)
    assert row[5] == f'{seq_rounds} / {pasta_tokens}'
  # The theoretical speedup of the answers with promises, from the reported rounds.
  assert sum(int(r[3]) for r in rows) > sum(int(r[4]) for r in rows)
  (summary,) = [r for r in _table_rows(out, '| family | prompts |') if r[0] == 'all']
  assert summary[1:4] == ['3', '100.0', '100.0']  # the references pass the checkers
  assert 'forced decodes verified: 3 PASTA answers and 3 plain answers' in out
  assert out.count('pooled over 3 prompts') == 1


@pytest.mark.slow  # about 40 s on 2 cores (a program per batch size and mode)
def test_bench_batch_reports_both_modes_at_every_batch_size(workload):
  out = _run_script('scripts/bench_batch.py', '--preset', 'tiny', '--batches', '1,2',
                    '--requests', '2', '--runs', '1', '--slots', '4', '--cache_size', '256')
  rows = {(int(r[0]), r[1]): r for r in _table_rows(out, '| batch | mode |')}
  assert set(rows) == {(1, 'sequential'), (1, 'pasta'), (2, 'sequential'), (2, 'pasta')}
  seq, pasta = [[w[i] for w in workload[:2]] for i in (1, 2)]
  # Rounds of a batch: those of its slowest request (the mean over batches).
  assert float(rows[(1, 'sequential')][5]) == np.mean(seq)
  assert float(rows[(1, 'pasta')][5]) == np.mean(pasta)
  assert float(rows[(2, 'sequential')][5]) == max(seq)
  assert float(rows[(2, 'pasta')][5]) == max(pasta)
  for row in rows.values():
    assert float(row[2]) > 0 and float(row[3]) > 0
  assert "PASTA's answer tokens/s" in out
  assert 'forced decodes verified: all 2 requests' in out


@pytest.mark.parametrize('widths', ['1,2,3', '4,2', '0,4', 'a,4'])
def test_bench_forced_refuses_round_widths_that_do_not_end_with_the_slots(widths):
  run = subprocess.run([sys.executable, 'scripts/bench_forced.py', '--slots', '4',
                        '--round_widths', widths], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
  assert run.returncode == 2
  assert (f'--round_widths={widths}: expected increasing ints >= 1 that end with '
          '--slots=4') in run.stderr


def test_gpu_speed_check_refuses_a_backend_that_is_not_a_gpu(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != 'GPU_CHECK_ANY_BACKEND'}
  run = subprocess.run(['bash', 'scripts/gpu_speed_check.sh', str(tmp_path / 'out')],
                       cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**env, 'JAX_PLATFORMS': 'cpu', 'PYTHON': sys.executable})
  assert run.returncode == 100
  assert "jax's backend is 'cpu', not gpu" in run.stderr
  assert not any((tmp_path / 'out').iterdir())  # nothing measured
