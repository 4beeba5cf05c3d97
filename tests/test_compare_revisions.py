"""scripts/compare_revisions.py: reading Markdown tables, and a run on two revisions."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'scripts' / 'compare_revisions.py'


def _module():
  spec = importlib.util.spec_from_file_location('compare_revisions', SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_table_cells_reads_every_numeric_cell():
  text = '\n'.join([
      'intro line',
      '| preset | step (ms) | tokens/s | note |',
      '|---|---:|---|---|',
      '| tiny | 1.50 ms | 12,345 | fast |',
      '| tiny | 2.5 | 1e3 | again |',
      '',
      '| width | ratio |',
      '|---|---|',
      '| 8 | 1.05x |',
  ])
  assert _module().table_cells(text) == {
      (0, 'tiny', 'step (ms)'): 1.5, (0, 'tiny', 'tokens/s'): 12345.0,
      (0, 'tiny #2', 'step (ms)'): 2.5, (0, 'tiny #2', 'tokens/s'): 1000.0,
      (1, '8', 'ratio'): 1.05}


def test_two_revisions_side_by_side(tmp_path):
  """A repository whose benchmark got twice as slow: new/old reads 2."""
  repo = tmp_path / 'repo'
  (repo / 'scripts').mkdir(parents=True)
  shutil.copy(SCRIPT, repo / 'scripts' / 'compare_revisions.py')
  bench = repo / 'scripts' / 'bench.py'
  git = lambda *args: subprocess.run(['git', *args], cwd=repo, check=True,
                                     capture_output=True)
  git('init', '-q')
  for step_ms in (4, 8):
    bench.write_text(f"print('| case | step (ms) |')\nprint('|---|---|')\n"
                     f"print('| a | {step_ms} |')\n")
    git('add', '-A')
    git('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', f'{step_ms} ms')
  out = subprocess.run([sys.executable, 'scripts/compare_revisions.py', '--base=HEAD~1',
                        '--bench=scripts/bench.py', '--repeats=2'],
                       cwd=repo, capture_output=True, text=True, timeout=120, check=True).stdout
  assert '| 0 | a | step (ms) | 4 | 8 | 2.000 |' in out
  assert not (repo / '.git' / 'worktrees').exists() or not any(
      (repo / '.git' / 'worktrees').iterdir())


def test_usage_errors(tmp_path):
  result = subprocess.run([sys.executable, str(SCRIPT), '--bench=scripts/bench_model.py'],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert result.returncode == 1 and '--base and at least one --bench are required' in (
      result.stderr)
  result = subprocess.run([sys.executable, str(SCRIPT), '--base=no-such-revision',
                           '--bench=scripts/bench_model.py'],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert result.returncode == 1 and 'not a revision' in result.stderr
