"""The pairwise judge (pasta_jax/judging.py) and `python -m pasta_jax.judge`, through the
real `openai` client against a scripted chat-completions server on 127.0.0.1: verdicts
with log-probabilities and without, both orders, malformed replies and their fixes, 429
with Retry-After, 500s, timeouts, refused keys, and a killed run that resumes without
asking twice."""

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys

import pytest

from pasta_jax import errors
from pasta_jax import judging
from pasta_jax.chat import flags as chat_flags
from pasta_jax.chat import service as service_lib
from tests.annotation import chat_server

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
RANK = {'good': 2, 'fine': 1, 'bad': 0}  # the scripted judge's taste: answers are these words


def shown(request) -> tuple[str, str]:
  """The answers A and B of a verdict request."""
  text = request.messages[1]['content']
  a = text.split('[Answer A]\n', 1)[1].split('\n[End of answer A]', 1)[0]
  b = text.split('[Answer B]\n', 1)[1].split('\n[End of answer B]', 1)[0]
  return a, b


def verdict(letter, probabilities=None, lead=''):
  """An answer `lead + letter`; with `probabilities` {token: p}, the log-probabilities
  of its tokens (`lead` a token of its own, the verdict's alternatives those)."""
  if probabilities is None:
    return chat_server.Answer(lead + letter)
  top = tuple((t, math.log(p)) for t, p in probabilities.items())
  tokens = ((lead, -0.01, ((lead, -0.01),)),) if lead else ()
  return chat_server.Answer(lead + letter, logprobs=tokens + ((letter, math.log(
      probabilities.get(letter, 1e-3)), top),))


def fair(sure=0.8, logprobs=True):
  """A judge that prefers the better answer with probability `sure` (ties: T)."""
  def script(request):
    a, b = shown(request)
    letter = 'A' if RANK[a] > RANK[b] else 'B' if RANK[a] < RANK[b] else 'T'
    other = {'A': 'B', 'B': 'A', 'T': 'A'}[letter]
    rest = (1 - sure) / 2
    return verdict(letter, {letter: sure, other: rest, 'T' if letter != 'T' else 'B': rest}
                   if logprobs else None)
  return script


def service(server, **kwargs):
  kwargs.setdefault('retry', service_lib.Retry(max_retries=2, initial_backoff=0.01))
  return service_lib.Service(base_url=server.url, api_key='k', model='judge',
                             timeout=kwargs.pop('timeout', 5.0), seed=0,
                             top_logprobs=kwargs.pop('top_logprobs', 5), **kwargs)


def test_verdicts_parse_with_decorations_only():
  for text, want in [('A', 'A'), (' b\n', 'B'), ('[[A]]', 'A'), ('**T**', 'T'), ('Tie.', 'T'),
                     ('"B"', 'B')]:
    assert judging.parse_verdict(text) == want
  for text in (None, '', '  ', 'A is better', 'C', 'AB'):
    with pytest.raises(judging.Malformed):
      judging.parse_verdict(text)


def test_probabilities_are_the_verdicts_mass_at_the_verdict_token():
  lp = math.log
  tokens = [{'token': ' ', 'logprob': -0.1, 'top': [[' ', -0.1], ['A', lp(0.05)]]},
            {'token': 'A', 'logprob': lp(0.5), 'top': [['A', lp(0.5)], [' A', lp(0.1)],
                                                       ['B', lp(0.2)], ['tie', lp(0.1)],
                                                       ['The', lp(0.1)]]}]
  p = judging.verdict_probabilities(tokens)
  assert p == pytest.approx({'A': 0.6 / 0.9, 'B': 0.2 / 0.9, 'T': 0.1 / 0.9})
  assert judging.preference_for_first('A', p) == pytest.approx((0.6 + 0.05) / 0.9)
  assert judging.verdict_probabilities(None) is None
  assert judging.verdict_probabilities(
      [{'token': 'The', 'logprob': -0.1, 'top': [['It', -3.0]]}]) is None
  assert [judging.preference_for_first(v, None) for v in 'ABT'] == [1.0, 0.0, 0.5]


def test_both_orders_weighted_by_logprobs():
  with chat_server.ChatServer(fair(0.8)) as server:
    svc = service(server)
    judge = judging.Judge(svc)
    j = judge.judge('q?', 'good', 'bad')
    orders = [shown(r) for r in server.received]
    assert [r.body['logprobs'] for r in server.received] == [True, True]
    assert server.received[0].body['top_logprobs'] == 5
  assert orders == [('good', 'bad'), ('bad', 'good')]  # the answer first, then the baseline
  # Each order: p(better) 0.8, p(worse) 0.1, p(tie) 0.1 -> preference 0.85 for the better.
  assert j.outcome == judging.JUDGED and j.win == pytest.approx(0.85) and j.agree
  assert [o.confidence for o in j.orders] == ['logprobs', 'logprobs']
  assert j.orders[1].verdict == 'B' and j.orders[1].preference == pytest.approx(0.15)
  assert svc.counters.requests == 2


def test_position_bias_cancels_and_verdicts_count_alone_without_logprobs():
  with chat_server.ChatServer(lambda r: verdict('A')) as server:  # always the first
    j = judging.Judge(service(server)).judge('q?', 'bad', 'good')
  assert (j.win, j.agree) == (0.5, False)
  assert [o.confidence for o in j.orders] == ['verdict', 'verdict']
  with chat_server.ChatServer(fair(logprobs=False)) as server:
    judge = judging.Judge(service(server, top_logprobs=0))
    assert [judge.judge('q', a, b).win for a, b in [('good', 'bad'), ('bad', 'good'),
                                                     ('fine', 'fine')]] == [1.0, 0.0, 0.5]
    assert 'logprobs' not in server.received[0].body  # not asked for


def test_a_malformed_verdict_is_asked_again_then_counted_invalid():
  fixes = []

  def script(request):
    if len(request.messages) > 2:
      fixes.append(request.messages[-1]['content'])
      if shown(request)[0] == 'good':
        return verdict('A', {'A': 0.9, 'B': 0.1}, lead=' ')
    return chat_server.Answer('I think the first answer is better.')

  with chat_server.ChatServer(script) as server:
    judge = judging.Judge(service(server), fix_attempts=1)
    j = judge.judge('q', 'good', 'bad')
    assert server.count() == 4
  assert fixes[0] == ("Your reply is not a verdict: expected one letter, A, B or T, got 'I "
                      "think the first answer is better.'. Reply with one letter and nothing "
                      'else: A, B or T.')
  first, second = j.orders
  assert (first.outcome, first.attempts, first.preference) == ('judged', 2, 0.9)
  assert (second.outcome, second.attempts) == ('invalid', 2)
  assert j.outcome == 'invalid' and j.win is None  # not a tie
  assert j.detail == ("baseline first: expected one letter, A, B or T, got 'I think the "
                      "first answer is better.'")
  summary = judging.summarize([j])['all']
  assert (summary['judged'], summary['invalid']) == (0, 1) and math.isnan(summary['win_rate'])


def test_429_500_and_timeouts_are_retried_and_exhausted_retries_fail_the_pair():
  def script(request):
    if request.number == 1:
      return chat_server.Error(429, headers={'Retry-After': '0.2'})
    if request.number == 2:
      return chat_server.Error(500)
    if request.number == 3:
      return chat_server.Slow(2.0, verdict('A'))
    return fair()(request)

  with chat_server.ChatServer(script) as server:
    svc = service(server, timeout=0.5, retry=service_lib.Retry(max_retries=3,
                                                               initial_backoff=0.01))
    j = judging.Judge(svc).judge('q', 'good', 'bad')
  assert j.outcome == 'judged' and j.win == pytest.approx(0.85)
  assert dict(svc.counters.retries) == {'429': 1, '500': 1, 'timeout': 1}
  with chat_server.ChatServer(lambda r: chat_server.Error(503, 'busy')) as server:
    svc = service(server)
    j = judging.Judge(svc).judge('q', 'good', 'bad')
  assert j.outcome == 'failed' and j.win is None and j.detail.startswith('answer first: 503')
  assert server.count() == 6  # 3 tries per order
  with pytest.raises(errors.ServiceError, match='1 of 1 pairs got no verdict'):
    judging.check_failed([j], 'see the output')


def test_judge_many_keeps_order_groups_and_stops_on_a_refused_key(tmp_path):
  pairs = [('q1', 'good', 'bad'), ('q2', 'bad', 'good'), ('q3', 'fine', 'fine'),
           ('q4', 'good', 'fine')]
  with chat_server.ChatServer(fair(logprobs=False)) as server:
    judgements = judging.judge_many(judging.Judge(service(server)), pairs, concurrency=3,
                                    progress=False)
  assert [j.win for j in judgements] == [1.0, 0.0, 0.5, 1.0]
  summary = judging.summarize(judgements, ['x', 'y', 'x', 'y'])
  assert list(summary) == ['x', 'y', 'all']
  assert summary['x']['win_rate'] == 75.0 and summary['all']['win_rate'] == 62.5
  assert summary['all']['agreement'] == 1.0 and summary['all']['from_logprobs'] == 0.0
  assert '| all | 4 | 4 | 0 | 0 | 62.5 | 100% | 0% |' in judging.table(summary)
  settings = chat_flags.Settings(base_url=None, api_key='k', model='judge',
                                 names={'base_url': '--judge_base_url',
                                        'api_key': '--judge_api_key', 'model': '--judge'})
  with chat_server.ChatServer(lambda r: chat_server.Error(401, 'bad key')) as server:
    settings = dataclasses.replace(settings, base_url=server.url)
    with judging.opened(settings, str(tmp_path / 'c.jsonl')) as judge:
      with pytest.raises(errors.ServiceError, match=r'status 401: bad key \(check the API '
                         r'key \(--judge_api_key or OPENAI_API_KEY\)\); the 0 replies'):
        judging.judge_all(judge, pairs, concurrency=2, progress=False)
    assert server.count() <= 2  # the requests queued behind the refused one were not sent


# -- the command line ---------------------------------------------------------------


def cli(*args, popen=False):
  env = {k: v for k, v in os.environ.items() if not k.startswith('OPENAI_')}
  env.update(PYTHONPATH=ROOT + os.pathsep + env.get('PYTHONPATH', ''), OPENAI_API_KEY='k')
  command = [sys.executable, '-m', 'pasta_jax.judge', *map(str, args)]
  if popen:
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True,
                        timeout=120)


def write_pairs(path, pairs):
  with open(path, 'w', encoding='utf-8') as f:
    for i, (answer, baseline, family) in enumerate(pairs):
      f.write(json.dumps({'id': i, 'prompt': f'q{i}', 'answer': answer, 'baseline': baseline,
                          'family': family}) + '\n')
  return str(path)


def read_jsonl(path):
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def test_cli_writes_verdicts_and_win_rates_per_family(tmp_path):
  data = write_pairs(tmp_path / 'pairs.jsonl', [('good', 'bad', 'lists'), ('bad', 'good', 'lists'),
                                                ('fine', 'bad', 'math')])
  with chat_server.ChatServer(fair(0.8)) as server:
    result = cli('--input', data, '--output', tmp_path / 'v.jsonl', '--model=judge',
                 '--base_url', server.url, '--concurrency=2')
    assert server.count() == 6 and server.received[0].body['max_tokens'] == 16
  assert result.returncode == 0, result.stderr
  rows = read_jsonl(tmp_path / 'v.jsonl')
  assert [r['id'] for r in rows] == [0, 1, 2] and rows[0]['family'] == 'lists'
  assert [r['judgement']['win'] for r in rows] == pytest.approx([0.85, 0.15, 0.85])
  assert rows[0]['judgement']['orders'][0]['probabilities'] == pytest.approx(
      {'A': 0.8, 'B': 0.1, 'T': 0.1})
  assert '| lists | 2 | 2 | 0 | 0 | 50.0 | 100% | 100% |' in result.stdout
  assert '| math | 1 | 1 | 0 | 0 | 85.0 |' in result.stdout
  assert 'requests: 6 sent, 6 answered' in result.stdout
  # Failed requests: the output is written, the pair says why, exit status 7.
  with chat_server.ChatServer(lambda r: chat_server.Error(500)) as server:
    result = cli('--input', data, '--output', tmp_path / 'f.jsonl', '--model=judge',
                 '--base_url', server.url, '--max_retries=0', '--limit=1')
  assert result.returncode == 7 and 'error: 1 of 1 pairs got no verdict' in result.stderr
  assert read_jsonl(tmp_path / 'f.jsonl')[0]['judgement']['outcome'] == 'failed'


def test_cli_killed_run_resumes_without_asking_twice(tmp_path):
  data = write_pairs(tmp_path / 'pairs.jsonl', [('good', 'bad', 'f'), ('bad', 'fine', 'f'),
                                                ('fine', 'fine', 'f')])
  out = tmp_path / 'v.jsonl'
  run = {}
  with chat_server.ChatServer(chat_server.killing(4, run, fair())) as server:
    args = ['--input', data, '--output', out, '--model=judge', '--base_url', server.url,
            '--concurrency=1']
    run['process'] = cli(*args, popen=True)
    run['process'].communicate(timeout=120)
    assert run['process'].returncode == -signal.SIGKILL
    assert not out.exists() and len(read_jsonl(tmp_path / 'v.cache.jsonl')) == 3
    del run['process']
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    answered = list(server.answered)
  # No verdict was asked for twice; the last pair's two orders are one chat (equal answers).
  assert len(answered) == len(set(answered)) == 5
  assert '4 replies from the cache' in result.stdout  # 3 in its file, 1 the same chat
  assert 'HTTP Request' not in result.stderr
  assert [r['judgement']['win'] for r in read_jsonl(out)] == pytest.approx([0.85, 0.15, 0.5])


@pytest.mark.parametrize('args,status,message', [
    (['--model=j', '--top_logprobs=-1'], 2, 'error: --top_logprobs=-1: expected an int >= 0'),
    ([], 2, 'error: the judge needs --model'),
    (['--model=j', '--baseline_field=ref'], 3, "pairs.jsonl:1: missing field: 'ref'"),
])
def test_cli_mistakes(tmp_path, args, status, message):
  data = write_pairs(tmp_path / 'pairs.jsonl', [('good', 'bad', 'f')])
  result = cli('--input', data, '--output', tmp_path / 'v.jsonl', '--base_url=http://x/v1',
               *args)
  assert result.returncode == status and message in result.stderr, result.stderr
  assert 'Traceback' not in result.stderr


def test_evaluation_rows_get_the_win_rate_per_family_beside_the_checkers(tmp_path):
  from pasta_jax import comparison  # pylint: disable=g-import-not-at-top

  def row(family, pasta, baseline, status='done'):
    return comparison.PromptResult(
        prompt='q', family=family, baseline_text=baseline, baseline_quality=1.0,
        baseline_tokens=10, baseline_decode_seconds=1.0, baseline_prefill_seconds=0.1,
        pasta_text=pasta, pasta_annotated=None, pasta_quality=0.5, pasta_tokens=10,
        pasta_steps=5, pasta_decode_seconds=0.5, pasta_prefill_seconds=0.1,
        pasta_status=status, baseline_status=status, timeline=[[1, 0, 5], [1, 1, 6]])

  rows = {'a': [row('lists', 'good', 'bad'), row('lists', 'bad', 'good'),
                row('math', 'fine', 'bad'), row('math', '', '', 'prompt_too_long')],
          'b': [row('lists', 'fine', 'fine')]}
  with chat_server.ChatServer(fair(0.8)) as server:
    judgements = comparison.judge_rows(judging.Judge(service(server)), rows, concurrency=2)
    assert server.count() == 8  # 4 decoded pairs x 2 orders (no cache here)
  assert len(judgements) == 4 and rows['a'][3].judge is None  # not decoded: not judged
  summary = comparison.summarize(rows['a'])
  assert summary['lists']['judge_win_rate'] == pytest.approx(50.0)
  assert summary['math']['judge_win_rate'] == pytest.approx(85.0)
  assert summary['all']['judge_win_rate'] == pytest.approx(100 * 1.85 / 3)
  assert summary['all']['judge_judged'] == 3 and summary['all']['judge_from_logprobs'] == 1.0
  table = comparison.markdown_table(summary).splitlines()
  assert '| quality: PASTA | judge: PASTA win rate | tokens' in table[0]
  assert table[2].startswith('| lists | 2 | 100.0 | 50.0 | 50.0 | ')
  assert table[1].count('---') == 12
  paths = comparison.write_outputs(rows['a'], summary, str(tmp_path))
  with open(paths['results']) as f:
    saved = json.load(f)
  assert saved['prompts'][0]['judge']['win'] == pytest.approx(0.85)
  assert saved['prompts'][0]['judge']['orders'][1]['verdict'] == 'B'
  assert saved['prompts'][3]['judge'] is None
  both = comparison.comparison_table({'a': summary, 'b': comparison.summarize(rows['b'])}, {})
  assert '| quality: PASTA | judge: PASTA win rate | theoretical' in both
  assert '| b |  | 100.0 | 50.0 | 50.0 | ' in both
  assert 'judge' not in comparison.markdown_table(comparison.summarize([row('x', 'a', 'b')]))


def test_stage_two_judge_settings_are_checked(monkeypatch):
  from pasta_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from pasta_jax.preference import judged  # pylint: disable=g-import-not-at-top
  from configs import synth_po  # pylint: disable=g-import-not-at-top

  def config(**po):
    c = synth_po.get_config('tiny')
    c.init.run = '/some/run'
    c.po.update(po)
    return c

  assert config_lib.resolve(config()).po.quality == 'exact'
  with pytest.raises(config_lib.ConfigError, match=r"po.quality='best': expected one of"):
    config_lib.resolve(config(quality='best'))
  with pytest.raises(config_lib.ConfigError, match=r"config.po.judge.model='': expected the "):
    config_lib.resolve(config(quality='judge'))
  c = config(quality='judge')
  c.po.sequential_run = '/seq'
  c.po.judge.update({'model': 'm', 'top_logprobs': -1})
  with pytest.raises(config_lib.ConfigError, match=r'po.judge.top_logprobs=-1: expected an '):
    config_lib.resolve(c)
  c.po.judge.top_logprobs = 0
  c.data.name = 'pasta_jsonl'  # any data set, with the judge
  c.data.jsonl_name, c.data.jsonl_paths = 'x', 'train=x.jsonl'
  resolved = config_lib.resolve(c)
  monkeypatch.delenv('OPENAI_API_KEY', raising=False)
  with pytest.raises(config_lib.ConfigError, match=r'API key in the environment variable '
                     'OPENAI_API_KEY'):
    judged.service_settings(resolved)
  monkeypatch.setenv('OPENAI_API_KEY', 'k')
  settings = judged.service_settings(resolved)
  assert (settings.model, settings.api_key, settings.max_tokens) == ('m', 'k', 16)
  c.po.quality = 'exact'
  with pytest.raises(config_lib.ConfigError, match="'pasta_synth' in stage 2 with po.quality"):
    config_lib.resolve(c)
