"""Smoke runs of the benchmark scripts on tiny settings: they run end to end and
print their tables (the numbers themselves are for docs/benchmarks.md)."""

import subprocess
import sys
from pathlib import Path

import pytest

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
