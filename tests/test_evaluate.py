"""End to end on tiny runs: train PASTA and sequential models a few steps, decode with
the CLI, evaluate the pair and check every output the evaluation promises."""

import io
import json
import os
import re
import subprocess
import sys

import jax
import pytest

from pasta_jax import comparison
from pasta_jax import lang
from pasta_jax import models
from pasta_jax.data import sources as sources_lib
from pasta_jax.data import synthetic
from pasta_jax.interpreter import Interpreter, InterpreterConfig
from pasta_jax.training import loop

from configs import synth
from tests import fixtures

# One worker runs this module, so its module fixtures are made once (setup.cfg).
pytestmark = pytest.mark.xdist_group('evaluate')

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  previous = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  base = tmp_path_factory.mktemp('runs')
  data_dir = str(base / 'tfds')
  workdirs = {}
  for preset in ('tiny', 'tiny_sequential'):
    config = synth.get_config(preset)
    config.data.data_dir = data_dir
    config.train.num_steps = 6
    config.eval.every_steps = 6
    config.checkpoint.every_steps = 6
    workdirs[preset] = str(base / preset)
    loop.train_and_evaluate(config, workdirs[preset], stream=io.StringIO())
  yield workdirs['tiny'], workdirs['tiny_sequential'], data_dir
  jax.config.update('jax_disable_most_optimizations', previous)


def test_evaluation_writes_table_json_plots_and_alpaca_eval(runs, tmp_path, capsys):
  pasta_dir, seq_dir, _ = runs
  pasta, baseline, run = comparison.load_pair(pasta_dir, seq_dir, max_steps=48,
                                              cache_size=256)
  assert pasta.config.slots == run.config.interpreter.slots and baseline.config.sequential
  source = sources_lib.data_sources(run.config.data, ['test'])['test']
  rows = comparison.evaluate(pasta, baseline, source, num_prompts=4, progress=True)
  bar = capsys.readouterr().err  # tqdm's bar
  assert 'evaluating: 100%' in bar and '| 4/4 [' in bar and len(rows) == 4
  for row in rows:
    assert 0.0 <= row.pasta_quality <= 1.0 and 0.0 <= row.baseline_quality <= 1.0
    assert row.pasta_decode_seconds > 0 and row.baseline_decode_seconds > 0
    assert row.pasta_prefill_seconds > 0 and row.baseline_prefill_seconds > 0
    assert row.end_to_end_speedup == pytest.approx(
        (row.baseline_prefill_seconds + row.baseline_decode_seconds)
        / (row.pasta_prefill_seconds + row.pasta_decode_seconds))
    assert row.theoretical_speedup == row.baseline_tokens / row.pasta_steps
    assert row.pasta_tokens == len(row.timeline)
  summary = comparison.summarize(rows)
  assert summary['all']['prompts'] == 4 and set(summary) >= {'all'}
  families = [name for name in summary if name != 'all']
  assert sum(summary[f]['prompts'] for f in families) == 4
  paths = comparison.write_outputs(rows, summary, str(tmp_path))
  for name in ('results', 'table', 'pareto', 'speedups', 'timeline',
               'alpaca_eval_pasta', 'alpaca_eval_sequential'):
    assert os.path.getsize(paths[name]) > 0, name
  for name in ('pareto', 'speedups', 'timeline'):
    with open(paths[name], 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  with open(paths['alpaca_eval_pasta']) as f:
    outputs = json.load(f)
  assert [o['instruction'] for o in outputs] == [r.prompt for r in rows]
  assert {o['generator'] for o in outputs} == {'pasta'}
  assert [o['output'] for o in outputs] == [r.pasta_text for r in rows]
  with open(paths['results']) as f:
    assert json.load(f)['summary']['all']['prompts'] == 4
  table = comparison.markdown_table(summary)
  assert table.splitlines()[0].startswith('| family | prompts |') and '| all | 4 |' in table


def test_several_runs_are_compared_side_by_side(runs, tmp_path):
  pasta_dir, seq_dir, _ = runs
  pastas, baseline, pasta_runs = comparison.load_runs(
      [pasta_dir, pasta_dir], seq_dir, max_steps=32, cache_size=256)
  source = sources_lib.data_sources(pasta_runs[0].config.data, ['test'])['test']
  rows = comparison.evaluate_many({'a': pastas[0], 'b': pastas[1]}, baseline, source,
                                  num_prompts=3)
  assert set(rows) == {'a', 'b'} and len(rows['a']) == len(rows['b']) == 3
  # The baseline decodes each prompt once: both runs carry the same measurement.
  assert ([r.baseline_decode_seconds for r in rows['a']]
          == [r.baseline_decode_seconds for r in rows['b']])
  # The same weights decode the same answers (greedy).
  assert [r.pasta_text for r in rows['a']] == [r.pasta_text for r in rows['b']]
  summaries = {name: comparison.summarize(rows[name]) for name in rows}
  settings = {'a': comparison.position_setting(pasta_runs[0], pastas[0]), 'b': 'x'}
  assert settings['a'] == 'trained predicted, decoded predicted'
  table = comparison.comparison_table(summaries, settings).splitlines()
  assert table[0].startswith('| run | setting |') and len(table) == 4
  assert table[2].startswith('| a | trained predicted, decoded predicted | ')
  path = comparison.pareto_plot(summaries, str(tmp_path / 'pareto.png'))
  with open(path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def _evaluate_cli(*args):
  env = {**os.environ, 'PYTHONPATH': ROOT + os.pathsep + os.environ.get('PYTHONPATH', '')}
  return subprocess.run([sys.executable, '-m', 'pasta_jax.evaluate', *args],
                        capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)


@pytest.mark.slow  # over 25 s on 2 cores: the newest Python only (CI's budget)
def test_end_to_end_short(runs, tmp_path):
  """The README's main command, shortened: the evaluate CLI on two trained runs (the
  training half is the `runs` fixture: the same training loop the train CLI runs)."""
  pasta_dir, seq_dir, _ = runs
  out = tmp_path / 'eval'
  short = ['--max_steps=32', '--cache_size=256']
  result = _evaluate_cli(f'--pasta={pasta_dir}', f'--sequential={seq_dir}', f'--out={out}',
                         '--num_prompts=3', *short)
  assert result.returncode == 0, result.stderr[-3000:]
  assert '| family | prompts |' in result.stdout and '| all | 3 |' in result.stdout
  for name in ('results.json', 'table.md', 'pareto.png', 'speedups.png', 'timeline.png',
               'alpaca_eval_pasta.json', 'alpaca_eval_sequential.json'):
    assert (out / name).stat().st_size > 0, name
  # Two runs: a comparison table and one output directory per run. (Rounds that
  # always run every slot, the accelerator default; the baseline keeps its one.)
  result = _evaluate_cli(f'--pasta=one={pasta_dir},two={pasta_dir}', f'--sequential={seq_dir}',
                         f'--out={out}2', '--num_prompts=2', '--round_widths=8', *short)
  assert result.returncode == 0, result.stderr[-3000:]
  assert '| run | setting |' in result.stdout
  assert (tmp_path / 'eval2' / 'comparison.md').read_text().count('| one |') == 1
  assert (tmp_path / 'eval2' / 'two' / 'results.json').stat().st_size > 0
  # A sequential run passed as PASTA is refused with the reason.
  result = _evaluate_cli(f'--pasta={seq_dir}', f'--sequential={seq_dir}', f'--out={out}3')
  assert result.returncode != 0 and 'expected a PASTA run' in result.stderr
  # Interpreter settings out of range: the reason, not a traceback.
  result = _evaluate_cli(f'--pasta={pasta_dir}', f'--sequential={seq_dir}', f'--out={out}4',
                         '--cache_size=256', '--cache_stages=300')
  assert result.returncode != 0 and 'smaller than cache_size = 256' in result.stderr
  assert 'Traceback' not in result.stderr
  result = _evaluate_cli(f'--pasta={pasta_dir}', f'--sequential={seq_dir}', f'--out={out}5',
                         '--round_widths=1,4')
  assert result.returncode != 0 and 'end with slots = 8' in result.stderr
  assert 'Traceback' not in result.stderr


@pytest.mark.slow
def test_end_to_end_with_a_judge(runs, tmp_path):
  """--judge: every PASTA answer against the sequential one, through the real client
  and a scripted local chat-completions server; win rates per family in the table and
  results.json, a malformed verdict counted invalid."""
  from tests.annotation import chat_server  # pylint: disable=g-import-not-at-top
  from tests.test_judge import shown, verdict  # pylint: disable=g-import-not-at-top
  pasta_dir, seq_dir, _ = runs

  def script(request):  # the longer answer is better; request 2 and its fix are not verdicts
    if request.number == 2 or len(request.messages) > 2:
      return chat_server.Answer('Neither.')
    a, b = shown(request)
    letter = 'A' if len(a) > len(b) else 'B' if len(a) < len(b) else 'T'
    return verdict(letter, {letter: 0.7, **{v: 0.15 for v in 'ABT' if v != letter}})

  out = tmp_path / 'eval'
  with chat_server.ChatServer(script) as server:
    result = _evaluate_cli(f'--pasta={pasta_dir}', f'--sequential={seq_dir}', f'--out={out}',
                           '--num_prompts=3', '--max_steps=32', '--cache_size=256',
                           f'--judge_base_url={server.url}', '--judge_api_key=k',
                           '--judge=judge-model', '--judge_concurrency=1')
    assert server.received[0].body['model'] == 'judge-model'
  assert result.returncode == 0, result.stderr[-3000:]
  assert '| quality: PASTA | judge: PASTA win rate |' in result.stdout
  with open(out / 'results.json') as f:
    saved = json.load(f)
  judged = [p for p in saved['prompts'] if p['judge']['outcome'] == 'judged']
  assert len(judged) == 2 and len(saved['prompts']) == 3
  for p in judged:
    a, b = len(p['pasta_text']), len(p['baseline_text'])
    assert p['judge']['win'] == pytest.approx(0.775 if a > b else 0.225 if a < b else 0.5)
  overall = saved['summary']['all']
  assert (overall['judge_judged'], overall['judge_invalid']) == (2, 1)
  assert overall['judge_win_rate'] == pytest.approx(50 * sum(p['judge']['win'] for p in judged))
  assert '(1 invalid)' in (out / 'table.md').read_text()
  assert (out / 'judge_cache.jsonl').exists() and 'requests: ' in result.stdout


def test_run_names():
  from pasta_jax import evaluate as cli
  assert cli.parse_runs(['a=/x/y', '/p/q/']) == {'a': '/x/y', 'q': '/p/q/'}
  with pytest.raises(Exception, match='two runs are named'):
    cli.parse_runs(['/a/run', '/b/run'])
  with pytest.raises(Exception, match='expected DIR or NAME=DIR'):
    cli.parse_runs(['=/x'])


def test_summary_aggregates_by_hand():
  # Fields: prompt, family, baseline text/quality/tokens/decode s/prefill s, PASTA
  # text/annotated/quality/tokens/steps/decode s/prefill s, statuses.
  rows = [comparison.PromptResult('p', 'f', 'b', 1.0, 10, 2.0, 1.0, 'x', None, 0.5, 12, 5,
                                  1.0, 1.0, 'done', 'done'),
          comparison.PromptResult('q', 'f', 'b', 0.0, 40, 8.0, 2.0, 'y', None, 1.0, 44, 10,
                                  2.0, 3.0, 'done', 'done')]
  s = comparison.summarize(rows)['f']
  assert s['baseline_quality'] == 50.0 and s['pasta_quality'] == 75.0
  assert s['theoretical_speedup'] == pytest.approx((2.0 * 4.0) ** 0.5)
  # Wall-clock: decode times only (2/1 and 8/2); end to end: with the prefill.
  assert s['wallclock_speedup'] == pytest.approx((2.0 * 4.0) ** 0.5)
  assert s['end_to_end_speedup'] == pytest.approx((3.0 / 2.0 * 10.0 / 5.0) ** 0.5)
  assert s['realised_over_theoretical'] == pytest.approx(1.0)


def test_decode_cli_prints_threads_and_writes_a_trace(runs, tmp_path):
  pasta_dir, _, _ = runs
  trace = tmp_path / 'trace.json'
  env = {**os.environ, 'PYTHONPATH': ROOT + os.pathsep + os.environ.get('PYTHONPATH', '')}
  result = subprocess.run(
      [sys.executable, '-m', 'pasta_jax.decode', f'--workdir={pasta_dir}',
       '--prompt=do each: a) spell owl', '--prompt=sort: 3 1 2', '--max_steps=24',
       f'--prompt={"word " * 200}', '--cache_size=128', '--color=always', f'--trace={trace}'],
      capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.count('prompt: ') == 3
  assert re.search(r'main\S* rounds +1-', result.stdout), result.stdout
  assert '\033[' in result.stdout  # thread colours
  # The over-long prompt is reported; the other two decoded.
  assert re.search(r'\nstatus prompt_too_long: the prompt has \d+ tokens, more than the '
                   r'128 this interpreter takes', result.stdout), result.stdout
  assert 'warning: 1 of 3 prompts were too long and not decoded' in result.stderr
  data = json.loads(trace.read_text())
  assert len(data['results']) == 3
  assert data['results'][2]['status'] == 'prompt_too_long'
  assert data['results'][2]['prompt_tokens'] > 128 and data['results'][2]['detail']
  first = data['results'][0]
  assert first['status'] in ('done', 'budget', 'cache_full')
  assert len(first['timeline']) == first['total_tokens']
  if first['annotated'] is not None:
    assert lang.strip(lang.parse(first['annotated'])) == first['text']


def test_decode_cli_errors():
  result = subprocess.run([sys.executable, '-m', 'pasta_jax.decode', '--workdir=/nonexistent',
                           '--prompt=x'], capture_output=True, text=True, timeout=300)
  assert result.returncode == 4 and result.stderr == 'error: /nonexistent does not exist\n'
  result = subprocess.run([sys.executable, '-m', 'pasta_jax.decode', '--workdir=/tmp'],
                          capture_output=True, text=True, timeout=300)
  assert result.returncode != 0 and 'at least one --prompt' in result.stderr


@pytest.fixture(scope='module')
def random_pair():
  """A PASTA and a sequential interpreter over one tiny random model (no training)."""
  previous = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  tok = fixtures.synthetic_tokenizer(300)
  config = models.get_config('tiny', vocab_size=tok.vocab_size)
  params = models.init_params(config, jax.random.key(0))
  pasta = Interpreter(config, params, tok, InterpreterConfig(
      slots=2, max_threads=2, cache_size=64, max_steps=8))
  baseline = Interpreter(config, params, tok, InterpreterConfig(
      mode='sequential', slots=1, cache_size=64, max_steps=8))
  yield pasta, baseline
  jax.config.update('jax_disable_most_optimizations', previous)


def test_an_over_long_prompt_is_counted_apart(random_pair, tmp_path):
  pasta, baseline = random_pair
  examples = list(synthetic.generate('test', 2))
  record = lambda prompt, e: {'prompt': prompt.encode(), 'family': e.family.encode(),
                              'facts': e.facts.encode()}
  good = [record(e.prompt, e) for e in examples]
  source = [good[0], record('word ' * 80, examples[0]), good[1]]
  rows = comparison.evaluate(pasta, baseline, source)
  alone = comparison.evaluate(pasta, baseline, good)
  bad = rows[1]
  assert (bad.pasta_status, bad.baseline_status) == ('prompt_too_long',) * 2
  assert not bad.decoded and bad.pasta_tokens == 0
  assert bad.detail.startswith('PASTA: the prompt has ') and '; sequential: ' in bad.detail
  assert 'more than the 64 this interpreter takes' in bad.detail
  assert bad.wallclock_speedup != bad.wallclock_speedup  # NaN, not a division by zero
  keep = ('pasta_text', 'pasta_tokens', 'pasta_steps', 'pasta_status', 'baseline_text',
          'baseline_tokens', 'baseline_status', 'timeline', 'pasta_quality')
  for got, want in zip([rows[0], rows[2]], alone):
    assert got.decoded and got.detail == ''
    assert {k: getattr(got, k) for k in keep} == {k: getattr(want, k) for k in keep}
  summary, summary_alone = comparison.summarize(rows), comparison.summarize(alone)
  assert (summary['all']['prompts'], summary['all']['decoded'],
          summary['all']['prompt_too_long']) == (3, 2, 1)
  for key in ('pasta_tokens', 'baseline_tokens', 'pasta_steps', 'theoretical_speedup',
              'pasta_quality'):
    assert summary['all'][key] == pytest.approx(summary_alone['all'][key], nan_ok=True)
  assert '| all | 3 (1 too long) |' in comparison.markdown_table(summary)
  paths = comparison.write_outputs(rows, summary, str(tmp_path))
  with open(paths['results']) as f:
    saved = json.load(f)
  assert [p['pasta_status'] for p in saved['prompts']][1] == 'prompt_too_long'
  assert saved['summary']['all']['prompt_too_long'] == 1


def test_no_prompts_is_refused_and_an_empty_summary_has_all():
  with pytest.raises(ValueError, match='num_prompts=0: expected an int >= 1'):
    comparison.evaluate_many({}, None, [], num_prompts=0)
  summary = comparison.summarize([])
  assert list(summary) == ['all'] and summary['all']['prompts'] == 0


@pytest.mark.slow
def test_skeleton_of_thought_runs_are_tabulated(runs, tmp_path):
  """--sot decodes the sequential run Skeleton-of-Thought style beside a PASTA run:
  a row of the comparison, its outputs, and sot.json with the outcome counts."""
  pasta_dir, seq_dir, _ = runs
  out = tmp_path / 'eval'
  result = _evaluate_cli(f'--pasta=pasta={pasta_dir}', f'--sot=sot={seq_dir}',
                         f'--sequential={seq_dir}', f'--out={out}', '--num_prompts=2',
                         '--max_steps=32', '--cache_size=256')
  assert result.returncode == 0, result.stderr[-3000:]
  assert re.search(r'\| sot \| skeleton-of-thought \|', result.stdout)
  report = json.loads((out / 'sot' / 'sot.json').read_text())
  assert sum(report['outcomes'].values()) == 2 == len(report['prompts'])
  assert f'sot: skeleton-of-thought: {report["outcomes"]["expanded"]} of 2 prompts' in (
      result.stdout)
  summary = json.loads((out / 'sot' / 'results.json').read_text())['summary']
  assert summary['all']['prompts'] == 2
  # A name used twice is refused.
  result = _evaluate_cli(f'--pasta=x={pasta_dir}', f'--sot=x={seq_dir}',
                         f'--sequential={seq_dir}', f'--out={out}2')
  assert result.returncode == 2 and 'two runs are named' in result.stderr
