r"""Executes the notebooks top to bottom and saves them with their outputs.

    python scripts/run_notebooks.py                      # both, default settings, in place
    python scripts/run_notebooks.py --ci notebooks/quickstart.ipynb --out /tmp/nb

Each notebook runs in a fresh kernel of this Python (nbclient) with notebooks/ as
its working directory, as Jupyter or Colab would run it; the committed notebooks
are saved by this script, so their outputs are those of a real run. `--ci` sets
PASTA_NOTEBOOK_CI=1 (the notebooks' smoke settings, what tests/test_notebooks.py
runs); `--workdir DIR` sets PASTA_NOTEBOOK_WORKDIR to DIR/<notebook name> (where
each trains; default: the notebook's own folder under the repository's workdir/). A cell that fails stops the
notebook: the error is printed and the exit status is 1, and the notebook is not
saved.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = ('notebooks/quickstart.ipynb', 'notebooks/finetune_gemma.ipynb')
CI_VARIABLE = 'PASTA_NOTEBOOK_CI'
WORKDIR_VARIABLE = 'PASTA_NOTEBOOK_WORKDIR'


def execute(path: str, *, timeout: int = 1800):
  """Runs the notebook at `path` in a fresh kernel (its folder the working
  directory, the environment this process's); returns the executed notebook and
  the seconds it took. Raises nbclient's CellExecutionError at a failing cell."""
  import nbclient  # pylint: disable=g-import-not-at-top
  import nbformat  # pylint: disable=g-import-not-at-top
  notebook = nbformat.read(path, as_version=4)
  start = time.time()
  client = nbclient.NotebookClient(
      notebook, timeout=timeout, kernel_name='python3',
      resources={'metadata': {'path': os.path.dirname(os.path.abspath(path))}})
  client.execute()
  return notebook, time.time() - start


def outputs(notebook, output_type: str) -> list[dict]:
  """Every output of the given type ('error', 'display_data', 'stream', ...)."""
  return [out for cell in notebook.cells if cell.cell_type == 'code'
          for out in cell.get('outputs', ()) if out['output_type'] == output_type]


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('notebooks', nargs='*', default=[os.path.join(REPO, n) for n in NOTEBOOKS])
  parser.add_argument('--ci', action='store_true', help=f'set {CI_VARIABLE}=1')
  parser.add_argument('--workdir', help=f'set {WORKDIR_VARIABLE}')
  parser.add_argument('--out', help='save the executed notebooks in this folder (default: '
                      'in place)')
  parser.add_argument('--timeout', type=int, default=1800, help='seconds a cell may take')
  args = parser.parse_args(argv)
  import nbclient  # pylint: disable=g-import-not-at-top
  import nbformat  # pylint: disable=g-import-not-at-top
  if args.ci:
    os.environ[CI_VARIABLE] = '1'
  for path in args.notebooks:
    if not os.path.isfile(path):
      print(f'error: {path}: no such notebook', file=sys.stderr)
      return 2
  for path in args.notebooks:
    if args.workdir:  # a folder per notebook: their runs must not resume each other's
      name = os.path.splitext(os.path.basename(path))[0]
      os.environ[WORKDIR_VARIABLE] = os.path.join(os.path.abspath(args.workdir), name)
    print(f'{path}: running ...', flush=True)
    try:
      notebook, seconds = execute(path, timeout=args.timeout)
    except nbclient.exceptions.CellExecutionError as e:
      print(f'error: {path}: a cell failed:\n{e}', file=sys.stderr)
      return 1
    out = path if not args.out else os.path.join(args.out, os.path.basename(path))
    if args.out:
      os.makedirs(args.out, exist_ok=True)
    nbformat.write(notebook, out)
    print(f'{path}: ran in {seconds:.0f} s, saved to {out} ({os.path.getsize(out) // 1024} KiB)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
