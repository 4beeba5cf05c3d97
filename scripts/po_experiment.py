r"""The stage-2 experiment in one command: SFT, a lambda sweep with rounds, the Pareto front.

    python scripts/po_experiment.py --out workdir/po_experiment
    python scripts/po_experiment.py --out workdir/po_experiment --sft_clean=workdir/synth_pasta \
        --sequential=workdir/synth_sequential        # reuse the main job's runs
    python scripts/po_experiment.py --out /tmp/po_smoke --tiny --lams=1,inf --rounds=1
    python scripts/po_experiment.py --out workdir/po_experiment \
        --apar=workdir/synth_apar --sot=workdir/po_experiment/sequential  # + baselines

Trains (or reuses) the SFT models on the clean and the noisy data and the
sequential model, runs stage 2 from each SFT model for every lambda of --lams
(--rounds rounds each), evaluates every SFT and round model in one
`python -m pasta_jax.evaluate` pass, then prints the tables and the targets of
docs/design.md section 7 and writes them to report.md and front.png in the
evaluation's directory (--out/eval; a part of the experiment, e.g.
--datasets=noisy, gets a directory of its own)
(`pasta_jax.preference.experiment` has the details). Every step is a command
line of its own, printed before it runs; a finished step is skipped and a
stopped one resumes, so running the same command again continues the
experiment. --report_only prints the report of a finished evaluation.

On 2 CPU cores the full experiment takes hours (docs/benchmarks.md has the
times): stage 1 about 10 minutes per model, one round of stage 2 (500 prompts
x 10 samples) about 5 to 8 minutes per lambda, the evaluation about 2 minutes per
model.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time

from absl import app
from absl import flags

from pasta_jax import cli
from pasta_jax import errors
from pasta_jax.preference import experiment

_OUT = flags.DEFINE_string('out', 'workdir/po_experiment', 'Directory of the experiment.')
_DATASETS = flags.DEFINE_list('datasets', ['clean', 'noisy'], 'Data sets: clean, noisy.')
_LAMS = flags.DEFINE_list('lams', ['1', '2', '4', '8', 'inf'], 'The lambdas of stage 2.')
_ROUNDS = flags.DEFINE_integer('rounds', 2, 'Rounds of stage 2 per lambda.')
_TINY = flags.DEFINE_bool('tiny', False, 'The tiny build and model everywhere (a smoke run).')
_NUM_PROMPTS = flags.DEFINE_integer('num_prompts', None,
                                    'Test prompts the evaluation decodes (default: all).')
_SEQUENTIAL = flags.DEFINE_string('sequential', '',
                                  'An existing sequential run (default: trained in --out).')
_SFT_CLEAN = flags.DEFINE_string('sft_clean', '', 'An existing SFT run on the clean data.')
_SFT_NOISY = flags.DEFINE_string('sft_noisy', '', 'An existing SFT run on the noisy data.')
_STAGE1 = flags.DEFINE_multi_string('stage1', [], 'KEY=VALUE config override of the stage-1 '
                                    'runs trained here, e.g. train.num_steps=500 (repeatable).')
_STAGE2 = flags.DEFINE_multi_string('stage2', [], 'KEY=VALUE config override of the stage-2 '
                                    'runs, e.g. po.lr=3e-6 (repeatable).')
_APAR = flags.DEFINE_string('apar', '', 'An APAR-style run (configs/synth.py:apar) to plot '
                            'and tabulate as a baseline.')
_SOT = flags.DEFINE_string('sot', '', 'A run (e.g. the sequential one) to decode '
                           'Skeleton-of-Thought style, plotted and tabulated as a baseline.')
_REPORT_ONLY = flags.DEFINE_bool('report_only', False,
                                 'Only print the report of a finished evaluation.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False,
                             'Print the steps (and whether each has finished), run nothing.')


def _plan() -> experiment.Plan:
  cli.check_positive(_NUM_PROMPTS)
  for flag in (_SEQUENTIAL, _SFT_CLEAN, _SFT_NOISY, _APAR, _SOT):
    cli.check_flag(flag, not flag.value or os.path.isdir(flag.value),
                   'an existing run directory')
  return experiment.Plan(
      out=os.path.abspath(_OUT.value), datasets=tuple(_DATASETS.value),
      lams=tuple(experiment.parse_lam(v) for v in _LAMS.value), rounds=_ROUNDS.value,
      tiny=_TINY.value, num_prompts=_NUM_PROMPTS.value, sequential=_SEQUENTIAL.value,
      sft={k: v for k, v in (('clean', _SFT_CLEAN.value), ('noisy', _SFT_NOISY.value)) if v},
      stage1_overrides=experiment.split_overrides(_STAGE1.value),
      stage2_overrides=experiment.split_overrides(_STAGE2.value),
      apar=_APAR.value, sot=_SOT.value)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  plan = _plan()
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  steps = plan.steps()
  if not _REPORT_ONLY.value:
    for i, step in enumerate(steps, 1):
      command = shlex.join([sys.executable, '-m', *step.argv])
      if step.finished(plan):
        print(f'[{i}/{len(steps)}] {step.name}: finished, skipped', flush=True)
        continue
      print(f'[{i}/{len(steps)}] {step.name}: {command}', flush=True)
      if _DRY_RUN.value:
        continue
      os.makedirs(plan.out, exist_ok=True)
      shared = plan.share_first_samples(step)
      if shared:
        print(f'[{i}/{len(steps)}] {step.name}: round 1 samples copied from {shared} (the '
              'same model, prompts and seed)', flush=True)
      start = time.perf_counter()
      status = subprocess.call([sys.executable, '-m', *step.argv], cwd=root)
      if status:
        cli.fail(f'step {step.name} stopped with exit status {status} (its message is above); '
                 'run the same command again to resume from it', status)
      if step.kind == 'evaluate':
        experiment.mark_evaluated(plan)
      print(f'[{i}/{len(steps)}] {step.name}: done in {time.perf_counter() - start:.0f} s',
            flush=True)
    if _DRY_RUN.value:
      return
  elif not experiment.evaluation_finished(plan):
    raise errors.DataError(f'{plan.eval_dir()} holds no finished evaluation of these models; '
                           'run without --report_only')
  text, path = experiment.run_report(plan)
  print('\n' + text + f'\n\nreport: {os.path.join(plan.eval_dir(), "report.md")}\nplot: {path}')


if __name__ == '__main__':
  cli.run(main)
