"""The stage-2 experiment's plan (steps, what counts as finished), its report and
targets read from evaluation results, and the script's command line."""

import json
import math
import os
import subprocess
import sys

import pytest

from pasta_jax import errors
from pasta_jax.preference import common
from pasta_jax.preference import experiment
from pasta_jax.preference import rounds

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAMILIES = ('list_ops', 'mixed')


def summary(quality, speedup, theoretical=None, *, families=None, baseline=98.0):
  families = families or {f: quality for f in FAMILIES}
  entry = lambda q: {'pasta_quality': q, 'baseline_quality': baseline,  # noqa: E731
                     'wallclock_speedup': speedup,
                     'theoretical_speedup': theoretical or 1.5 * speedup}
  out = {f: entry(q) for f, q in families.items()}
  out['all'] = entry(quality)
  return out


def write_results(plan, summaries):
  for name, s in summaries.items():
    os.makedirs(os.path.join(plan.eval_dir(), name), exist_ok=True)
    with open(os.path.join(plan.eval_dir(), name, 'results.json'), 'w') as f:
      json.dump({'summary': s, 'prompts': []}, f)


def good_results(plan):
  """Results that meet every target: smaller lambda faster, round 2 ahead."""
  out = {}
  for data in plan.datasets:
    out[experiment.sft_name(data)] = summary(95.0, 1.5)
    for i, lam in enumerate(plan.lams):
      for r in (1, 2):
        quality = 94.0 + i + r if not math.isinf(lam) else 97.6 + 0.1 * r
        out[experiment.po_name(data, lam, r)] = summary(quality, 2.0 - 0.1 * i + 0.05 * r)
  return out


def test_steps_name_the_runs_and_the_evaluation_covers_every_model(tmp_path):
  plan = experiment.Plan(out=str(tmp_path), lams=(1.0, math.inf), rounds=2,
                         sft={'clean': '/runs/sft'}, stage2_overrides=('--config.po.lr=3e-6',))
  steps = {s.name: s for s in plan.steps()}
  # The clean SFT run is given, so it is not trained.
  assert list(steps) == ['noisy_sft', 'sequential', 'clean_lam1', 'clean_laminf',
                         'noisy_lam1', 'noisy_laminf', 'evaluate']
  assert steps['noisy_sft'].argv[1] == '--config=configs/synth.py:noisy'
  assert steps['clean_laminf'].argv[3:] == ('--config.init.run=/runs/sft', '--config.po.lam=inf',
                                            '--config.po.rounds=2', '--config.po.lr=3e-6')
  pasta = steps['evaluate'].argv[1]
  assert pasta.startswith('--pasta=clean_sft=/runs/sft,clean_lam1_r1=')
  assert pasta.count('=') == 1 + 2 * (1 + 2 * 2)  # 2 SFT models + 2 lambdas x 2 rounds each
  tiny = experiment.Plan(out=str(tmp_path), tiny=True, datasets=('noisy',), lams=(2.0,))
  assert [s.argv[1] for s in tiny.steps()[:3]] == [
      '--config=configs/synth.py:tiny_noisy', '--config=configs/synth.py:tiny_sequential',
      '--config=configs/synth_po.py:tiny']


def test_finished_steps_are_recognised_from_what_they_leave(tmp_path):
  plan = experiment.Plan(out=str(tmp_path), datasets=('clean',), lams=(4.0,), rounds=2)
  sft, _, po, evaluate = plan.steps()
  assert not any(s.finished(plan) for s in (sft, po, evaluate))
  os.makedirs(os.path.join(sft.workdir, 'checkpoints', '100'))
  with open(os.path.join(sft.workdir, 'config.json'), 'w') as f:
    json.dump({'train': {'num_steps': 200}}, f)
  assert not sft.finished(plan)
  os.makedirs(os.path.join(sft.workdir, 'checkpoints', '200'))
  os.makedirs(os.path.join(sft.workdir, 'checkpoints', '300.orbax-checkpoint-tmp-1'))
  assert sft.finished(plan)
  # Stage 2 is finished when its last round is trained.
  for r in (1, 2):
    os.makedirs(rounds.round_dir(po.workdir, r))
  common.mark(rounds.round_dir(po.workdir, 1), 'trained', {})
  assert not po.finished(plan)
  common.mark(rounds.round_dir(po.workdir, 2), 'trained', {})
  assert po.finished(plan)
  # The evaluation is finished for the checkpoints it evaluated, not for newer ones.
  os.makedirs(plan.eval_dir())
  experiment.mark_evaluated(plan)
  assert evaluate.finished(plan)
  os.makedirs(os.path.join(sft.workdir, 'checkpoints', '400'))
  assert not evaluate.finished(plan)


def test_round_one_samples_are_shared_between_lambdas(tmp_path):
  plan = experiment.Plan(out=str(tmp_path), datasets=('noisy',), lams=(1.0, 2.0), rounds=1)
  _, _, first, second, _ = plan.steps()
  assert plan.share_first_samples(second) is None  # nothing sampled yet
  source = rounds.round_dir(first.workdir, 1)
  os.makedirs(source)
  with open(os.path.join(source, rounds.SAMPLES_FILE), 'w') as f:
    f.write('{"chunk": 1}\n')
  assert plan.share_first_samples(second) is None  # sampling not finished
  common.mark(source, 'sampled', {'seed': 7})
  assert plan.share_first_samples(second) == source
  target = rounds.round_dir(second.workdir, 1)
  assert open(os.path.join(target, rounds.SAMPLES_FILE)).read() == '{"chunk": 1}\n'
  assert rounds.read_marker(target, 'sampled') == {'settings': {'seed': 7}}
  assert plan.share_first_samples(second) is None  # it has them now
  assert plan.share_first_samples(plan.steps()[-1]) is None  # not a stage-2 step


def test_report_meets_the_targets_on_good_results(tmp_path):
  plan = experiment.Plan(out=str(tmp_path))
  write_results(plan, good_results(plan))
  points, sequential = experiment.load_points(plan)
  checks = experiment.targets(plan, points, sequential)
  assert len(checks) == 1 + 1 + 2 + 2  # dominance, fronts, order per round, clean per round
  assert all(t.passed for t in checks), [t for t in checks if not t.passed]
  text, plot = experiment.run_report(plan)
  assert os.path.getsize(plot) > 0 and text.count('- met: ') == len(checks)
  assert '| noisy_lam1_r2 | 1 | 2 | 96.0 | +1.0 | 2.10x | 1.40 | 3.15x | yes |' in text
  assert '| list_ops | 98.0 | 95.0 | 97.7 | 97.8 |' in text  # clean, lambda = inf per family
  assert open(os.path.join(plan.eval_dir(), 'report.md')).read() == text + '\n'
  assert plan.eval_dir() == os.path.join(plan.out, 'eval')
  part = experiment.Plan(out=str(tmp_path), datasets=('noisy',), lams=(1.0, math.inf))
  assert part.eval_dir() == os.path.join(plan.out, 'eval_noisy_lam1_inf')


def test_report_names_each_missed_target_and_by_how_much(tmp_path):
  plan = experiment.Plan(out=str(tmp_path))
  results = good_results(plan)
  # Noisy: every stage-2 model slower than SFT, round 2 behind round 1, and lambda 2's
  # models slower than those of larger lambdas.
  for lam in plan.lams:
    for r in (1, 2):
      name = experiment.po_name('noisy', lam, r)
      q = results[name]['all']['pasta_quality']
      results[name] = summary(q - r, 1.4 - (0.1 * r if lam != 2.0 else 0.5))
  # Clean, lambda = inf: 0.4 below overall but 2 points below on 'mixed'.
  for r in (1, 2):
    results[experiment.po_name('clean', math.inf, r)] = summary(
        97.6, 2.0, families={'list_ops': 98.0, 'mixed': 96.0})
  write_results(plan, results)
  checks = experiment.targets(plan, *experiment.load_points(plan))
  missed = {t.key: t.detail for t in checks if not t.passed}
  assert sorted(missed) == ['clean_inf_r1', 'clean_inf_r2', 'noisy_dominates', 'noisy_front',
                            'noisy_order_r1', 'noisy_order_r2']
  dominance = missed['noisy_dominates']
  assert dominance.startswith('none; closest ') and 'against SFT 95.0 at 1.50x' in dominance
  assert 'round-1 points beyond round 2' in missed['noisy_front']
  assert ('2: 0.90x, 4: 1.30x, 8: 1.30x, inf: 1.30x; out of order: 2 < 4, 2 < 8, 2 < inf'
          in missed['noisy_order_r1'])
  clean = missed['clean_inf_r1']
  assert 'worst family mixed (gap +2.0)' in clean and '97.6 against 98.0' in clean


def test_a_win_by_wall_clock_speedup_alone_needs_the_theoretical_speedup_too(tmp_path):
  plan = experiment.Plan(out=str(tmp_path), datasets=('noisy',), lams=(1.0,), rounds=1)
  sft, model = experiment.sft_name('noisy'), experiment.po_name('noisy', 1.0, 1)
  # 12% faster by the clock, the same theoretical speedup: timing noise.
  write_results(plan, {sft: summary(95.0, 1.5, 3.0), model: summary(95.0, 1.68, 3.0)})
  (check,) = [t for t in experiment.targets(plan, *experiment.load_points(plan))
              if t.key == 'noisy_dominates']
  assert not check.passed and 'a wall-clock gain only' in check.detail
  # The theoretical speedup up 10% as well: a real win.
  write_results(plan, {model: summary(95.0, 1.68, 3.3)})
  (check,) = [t for t in experiment.targets(plan, *experiment.load_points(plan))
              if t.key == 'noisy_dominates']
  assert check.passed and 'wall-clock gain only' not in check.detail


def test_report_of_a_missing_evaluation_is_a_data_error(tmp_path):
  with pytest.raises(errors.DataError, match='results.json is missing'):
    experiment.load_points(experiment.Plan(out=str(tmp_path)))


def test_the_script_lists_its_steps_and_refuses_bad_flags(tmp_path):
  def script(*args):
    return subprocess.run([sys.executable, 'scripts/po_experiment.py', f'--out={tmp_path}/x',
                           *args], capture_output=True, text=True, cwd=ROOT, timeout=300)
  dry = script('--dry_run', '--lams=2,inf', '--rounds=1', '--datasets=noisy')
  assert dry.returncode == 0, dry.stderr
  lines = dry.stdout.splitlines()
  assert [line.split(':')[0] for line in lines] == [
      '[1/5] noisy_sft', '[2/5] sequential', '[3/5] noisy_lam2', '[4/5] noisy_laminf',
      '[5/5] evaluate']
  assert not os.path.exists(f'{tmp_path}/x')  # a dry run writes nothing
  for args, message in ((['--lams=1,-2'], "--lams: '-2' is not a lambda"),
                        (['--datasets=clean,dirty'], '--datasets: expected some of clean'),
                        (['--stage2=po.lr'], "config override 'po.lr': expected KEY=VALUE"),
                        (['--sft_clean=/no/such/run'], '--sft_clean=/no/such/run: expected an'),
                        (['--report_only'], 'holds no finished evaluation')):
    result = script(*args)
    assert result.returncode in (2, 3), result.stderr
    assert result.stderr.startswith('error: ') and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_baselines_are_evaluated_tabulated_and_plotted_but_not_targets(tmp_path):
  runs_dir = tmp_path / 'runs'
  plan = experiment.Plan(out=str(tmp_path), apar=str(runs_dir / 'apar'),
                         sot=str(runs_dir / 'seq'))
  evaluate = plan.steps()[-1]
  assert f',apar={runs_dir / "apar"}' in next(a for a in evaluate.argv if a.startswith('--pasta'))
  assert f'--sot=sot={runs_dir / "seq"}' in evaluate.argv
  assert set(plan.eval_settings()['baselines']) == {'apar', 'sot'}
  assert 'baselines' not in experiment.Plan(out=str(tmp_path)).eval_settings()
  results = good_results(plan)
  results['apar'] = summary(90.0, 1.2)   # dominated by every stage-2 model
  results['sot'] = summary(99.5, 0.5)    # better quality than all: dominated by none
  write_results(plan, results)
  points, sequential = experiment.load_points(plan)
  plain = experiment.Plan(out=str(tmp_path))
  assert experiment.targets(plan, points, sequential) == experiment.targets(
      plain, points, sequential)
  text, plot = experiment.run_report(plan)
  assert os.path.getsize(plot) > 0
  assert '| apar | 90.0 | 1.20x | 1.80x | clean_lam1_r1, ' in text
  assert '| sot | 99.5 | 0.50x | 0.75x | none |' in text
