"""The notebooks run top to bottom, as they are, in a fresh kernel on the smoke
settings (PASTA_NOTEBOOK_CI=1), and show what they promise: no error output, the
threads' HTML view of every decoded answer, and the speedup table. The committed
notebooks carry the outputs of `scripts/run_notebooks.py` (the same execution)."""

import os

import nbformat
import pytest

from scripts import run_notebooks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(monkeypatch, tmp_path, name):
  monkeypatch.setenv(run_notebooks.CI_VARIABLE, '1')
  monkeypatch.setenv(run_notebooks.WORKDIR_VARIABLE, str(tmp_path))
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  # The tests' usual speed-up for tiny models (tests/fixtures.fast_compiles).
  monkeypatch.setenv('JAX_DISABLE_MOST_OPTIMIZATIONS', 'true')
  notebook, _ = run_notebooks.execute(os.path.join(REPO, 'notebooks', name), timeout=600)
  assert run_notebooks.outputs(notebook, 'error') == []
  return notebook


def _html(notebook):
  return [out['data']['text/html'] for out in run_notebooks.outputs(notebook, 'display_data')
          if 'text/html' in out['data']]


def _markdown(notebook):
  return [out['data']['text/markdown'] for out in run_notebooks.outputs(notebook, 'display_data')
          if 'text/markdown' in out['data']]


def _stdout(notebook):
  return ''.join(out['text'] for out in run_notebooks.outputs(notebook, 'stream')
                 if out['name'] == 'stdout')


def _check_views(notebook, answers, workdir):
  """The document view first, one result view (answer or status, and a timeline) per
  decoded prompt, the speedup table, and both runs' checkpoints."""
  views = _html(notebook)
  assert 'class="pasta-document"' in views[0]
  results = [v for v in views if 'class="pasta-result"' in v]
  assert len(results) == answers
  for view in results:
    assert 'class="pasta-answer"' in view or 'class="pasta-status"' in view
    assert '<svg class="pasta-timeline"' in view and '<rect' in view
  (table,) = _markdown(notebook)
  lines = table.splitlines()
  assert lines[0].startswith('| family | prompts | quality: sequential')
  assert lines[-1].startswith('| all |') and 'x |' in lines[-1]
  for run in ('pasta', 'sequential'):
    assert os.path.isdir(workdir / run / 'checkpoints')


# What each notebook prints on the smoke settings (stdout, in part).
PRINTED = {
    'quickstart.ipynb': [
        "backend 'cpu'", 'CI settings: True',
        "stripped: 'Two facts.\\nThe sun is a star.The moon orbits Earth. Done.'",
        'error: line 2:1 (offset 7): <promise> tokens must be'],
    'finetune_gemma.ipynb': [
        'stand-ins', "'config.json', 'model.safetensors'", 'PROMISE -> <unused0>',
        'annotated                   9'],  # 9 of the 10 built-in responses have a list
}


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(PRINTED))
def test_notebook_runs(monkeypatch, tmp_path, name):
  notebook = _run(monkeypatch, tmp_path, name)
  out = _stdout(notebook)
  for text in PRINTED[name]:
    assert text in out
  # Quickstart: 2 test prompts; finetune: the 2 validation prompts (a fifth of 10).
  _check_views(notebook, 2, tmp_path)


@pytest.mark.parametrize('name', ['quickstart.ipynb', 'finetune_gemma.ipynb'])
def test_committed_notebooks_carry_a_run(name):
  """Every code cell of the committed notebook was executed, in order, without an
  error, and the views are there."""
  notebook = nbformat.read(os.path.join(REPO, 'notebooks', name), as_version=4)
  nbformat.validate(notebook)
  code = [cell for cell in notebook.cells if cell.cell_type == 'code']
  assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
  assert run_notebooks.outputs(notebook, 'error') == []
  assert any('class="pasta-result"' in view for view in _html(notebook))
  assert len(_markdown(notebook)) == 1
