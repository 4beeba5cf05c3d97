"""`python -m pasta_jax.annotate` end to end, against a scripted chat-completions
server on 127.0.0.1 through the real `openai` client: outcomes and their files, fixes
of invalid annotations, failed requests and exit statuses, a killed run that resumes
without asking twice, rules annotations that build as a pasta_jsonl dataset, and the
whole chain: rules annotations -> pasta_jsonl -> tiny PASTA training -> evaluation
against a sequential run."""

import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import threading

import ml_collections
import pytest

from pasta_jax import errors
from pasta_jax import lang
from pasta_jax.annotation import job as job_lib
from pasta_jax.annotation import runner
from pasta_jax.chat import service as service_lib
from pasta_jax.data import encoding
from pasta_jax.data import synthetic
from pasta_jax.data import tfds_builders
from configs import synth
from tests import fixtures
from tests.annotation import chat_server

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
LISTS = ['Steps:\n- wash\n- dry\n\nDone.', '1. alpha beta\n2. gamma\n3. delta',
         'Intro\n* x\n* y\n']


def write_jsonl(path, rows) -> str:
  with open(path, 'w', encoding='utf-8') as f:
    f.writelines(json.dumps(row) + '\n' for row in rows)
  return str(path)


def read_jsonl(path) -> list[dict]:
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def prompt_rows(responses):
  return [{'prompt': f'question {i}', 'response': r, 'id': i} for i, r in enumerate(responses)]


def run_job(server, tmp_path, rows, **kwargs):
  """(summary, counters, stdout) of an in-process llm run over `rows`."""
  kwargs.setdefault('retry', service_lib.Retry(max_retries=2, initial_backoff=0.01))
  job = job_lib.Job(input=write_jsonl(tmp_path / 'in.jsonl', rows),
                    output=str(tmp_path / 'out.jsonl'), annotator=kwargs.pop('annotator', 'llm'),
                    base_url=server.url if server else None, api_key='k', model='fake',
                    concurrency=kwargs.pop('concurrency', 3), progress=False, **kwargs)
  out = io.StringIO()
  summary, counters = job_lib.run_job(job, out)
  return summary, counters, out.getvalue()


def cli(*args, timeout=120, popen=False, api_key='test-key', module='pasta_jax.annotate',
        **environ):
  """A subprocess running `module`'s command line (its Popen when `popen`), with
  OPENAI_API_KEY=api_key in its environment (none when None), no other OPENAI_*, and
  the variables of `environ`."""
  env = {k: v for k, v in os.environ.items() if not k.startswith('OPENAI_')}
  env.update(PYTHONPATH=ROOT + os.pathsep + env.get('PYTHONPATH', ''), JAX_PLATFORMS='cpu',
             **environ)
  if api_key is not None:
    env['OPENAI_API_KEY'] = api_key
  command = [sys.executable, '-m', module, *map(str, args)]
  if popen:
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout)


def test_llm_run_outcomes_files_and_measured_lengths(tmp_path):
  tok = fixtures.synthetic_tokenizer(50)
  tok.save(str(tmp_path / 'tok.model'))
  rows = [{'messages': [{'role': 'user', 'content': f'q{i}'},
                        {'role': 'assistant', 'content': r}], 'family': 'f'}
          for i, r in enumerate([*LISTS, 'Plain answer.', '  \n', 'a <sync/> b'])]
  rows.append({'messages': [{'role': 'user', 'content': 'unanswered'}]})
  with chat_server.ChatServer() as server:
    summary, counters, out = run_job(server, tmp_path, rows, tokenizer=str(tmp_path / 'tok.model'))
    asked = sorted(r.response for r in server.received)
  assert asked == sorted([*LISTS, 'Plain answer.'])  # nothing else was sent
  assert dict(summary.outcomes) == {runner.ANNOTATED: 3, runner.UNCHANGED: 1,
                                    runner.SKIPPED_EMPTY: 1, runner.SKIPPED_HAS_TAGS: 1,
                                    'skipped-no-response': 1}
  output = read_jsonl(tmp_path / 'out.jsonl')
  assert [r['prompt'] for r in output] == ['q0', 'q1', 'q2', 'q3']  # input order
  for row, response in zip(output, [*LISTS, 'Plain answer.']):
    doc = lang.parse(row['annotated_response'])
    assert lang.strip(doc) == response and row['family'] == 'f'
    assert doc == encoding.measure_promises(doc, tok)  # lengths counted by the tokenizer
    assert row['annotation']['lengths'] == 'measured' and row['annotation']['model'] == 'fake'
  assert output[0]['annotation']['input'] == f'{tmp_path}/in.jsonl:1'
  rejects = read_jsonl(tmp_path / 'out.rejects.jsonl')
  assert [r['outcome'] for r in rejects] == ['skipped-empty', 'skipped-has-tags',
                                            'skipped-no-response']
  assert rejects[2]['original'] == rows[-1]
  assert (counters.requests, counters.answered, counters.cached) == (4, 4, 0)
  assert 'counted by the tokenizer' in out and 'requests: 4 sent, 4 answered' in out
  assert not [p for p in os.listdir(tmp_path) if p.endswith('.tmp')]


def test_invalid_annotation_is_fixed_with_the_error_shown(tmp_path):
  shown = []

  def script(request):
    if request.fix is None:  # first try: a word lost
      return chat_server.Answer(request.response.replace('gamma', 'gama'))
    shown.append(request.fix)
    return chat_server.rules_answer(request)

  with chat_server.ChatServer(script) as server:
    summary, _, _ = run_job(server, tmp_path, prompt_rows(LISTS[1:2]))
    assert server.count() == 2
  assert dict(summary.outcomes) == {runner.ANNOTATED: 1}
  assert shown and shown[0].startswith(
      "the text without its tags differs from the response at line 2:7: the response has "
      "'ma\\n3. delta', it has 'a\\n3. delta'.\nReply with the whole answer again")
  (row,) = read_jsonl(tmp_path / 'out.jsonl')
  assert row['annotation']['attempts'] == 2 and row['original'] == {'id': 0}


def test_still_invalid_after_the_fixes_is_rejected_with_its_reason(tmp_path):
  def script(request):
    if 'wash' in request.response:
      return chat_server.Answer('Steps:\n<promise topic="x" tokens="10"/>')  # no body
    if 'alpha' in request.response:
      return chat_server.Answer('cut', finish_reason='length')
    return chat_server.rules_answer(request)

  with chat_server.ChatServer(script) as server:
    summary, _, out = run_job(server, tmp_path, prompt_rows(LISTS), fix_attempts=2)
    # The unparsable reply was asked to be fixed twice; the cut-off one never.
    assert server.count(lambda r: 'wash' in r.response) == 3
    assert server.count(lambda r: 'alpha' in r.response) == 1
  assert dict(summary.outcomes) == {runner.ANNOTATED: 1, runner.REJECTED: 2}
  rejects = {r['reason']: r for r in read_jsonl(tmp_path / 'out.rejects.jsonl')}
  assert set(rejects) == {'parse-error', 'truncated'}
  assert rejects['parse-error']['attempts'] == 3 and 'has no body' in rejects['parse-error'][
      'detail']
  assert rejects['parse-error']['response'] == LISTS[0]
  assert rejects['truncated']['reply'] == 'cut'
  assert 'rejected-invalid' in out and '(parse-error: 1, truncated: 1)' in out


def test_duplicate_records_are_asked_once(tmp_path):
  with chat_server.ChatServer(lambda r: chat_server.Slow(0.2, chat_server.rules_answer(r))
                              ) as server:
    summary, counters, _ = run_job(server, tmp_path, prompt_rows([LISTS[0]] * 3)[:1] * 3)
    assert server.count() == 1
  assert summary.outcomes[runner.ANNOTATED] == 3 and counters.cached == 2


def test_retry_after_is_waited_for(tmp_path):
  def script(request):
    if request.number == 1:
      return chat_server.Error(429, headers={'Retry-After': '1'})
    return chat_server.rules_answer(request)

  with chat_server.ChatServer(script) as server:
    summary, counters, _ = run_job(server, tmp_path, prompt_rows(LISTS[:1]))
    first, retry = server.received
  assert retry.time - first.time >= 0.95
  assert summary.outcomes[runner.ANNOTATED] == 1 and dict(counters.retries) == {'429': 1}


def test_failed_requests_exit_7_and_the_rerun_asks_for_those_only(tmp_path):
  healthy = threading.Event()

  def script(request):
    if 'alpha' in request.response and not healthy.is_set():
      return chat_server.Error(500)
    return chat_server.rules_answer(request)

  data = write_jsonl(tmp_path / 'in.jsonl', prompt_rows(LISTS))
  out = tmp_path / 'out.jsonl'
  with chat_server.ChatServer(script) as server:
    args = ['--input', data, '--output', out, '--annotator=llm', '--model=fake',
            '--base_url', server.url, '--max_retries=2', '--initial_backoff=0.01']
    result = cli(*args)
    assert result.returncode == 7, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f'error: 1 of 3 records got no annotation: their requests failed after 2 retries '
        f'(500: 1); they are listed in {tmp_path}/out.rejects.jsonl. Run the same command '
        'again to ask for these only (the replies already received come from the cache)')
    assert '  failed-request              1  (500: 1)' in result.stdout
    assert len(read_jsonl(out)) == 2
    (reject,) = read_jsonl(tmp_path / 'out.rejects.jsonl')
    assert (reject['outcome'], reject['reason']) == ('failed-request', '500')
    assert server.count(lambda r: 'alpha' in r.response) == 3
    healthy.set()
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    assert server.count() == 3 + 3  # the two answered ones were not asked again
  assert len(read_jsonl(out)) == 3 and read_jsonl(tmp_path / 'out.rejects.jsonl') == []
  assert 'requests: 1 sent, 1 answered, 0 retries; 2 replies from the cache' in result.stdout


def test_killed_run_resumes_without_asking_twice(tmp_path):
  responses = [f'Answer {i}:\n- part {i}a\n- part {i}b' for i in range(6)]
  data = write_jsonl(tmp_path / 'in.jsonl', prompt_rows(responses))
  out = tmp_path / 'out.jsonl'
  run = {}
  script = chat_server.killing(4, run, chat_server.rules_answer)
  with chat_server.ChatServer(script) as server:
    args = ['--input', data, '--output', out, '--annotator=llm', '--model=fake',
            '--base_url', server.url, '--concurrency=1']
    run['process'] = cli(*args, popen=True)
    run['process'].communicate(timeout=120)
    assert run['process'].returncode == -signal.SIGKILL
    assert not out.exists() and len(read_jsonl(tmp_path / 'out.cache.jsonl')) == 3
    del run['process']
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    answered, received = list(server.answered), list(server.received)
  assert len(answered) == len(set(answered)) == 6  # no answer was asked for twice
  assert len(received) == 7  # the one in flight when the run was killed, sent again
  assert [lang.strip(lang.parse(r['annotated_response'])) for r in read_jsonl(out)] == responses
  assert '3 replies from the cache' in result.stdout
  assert not [p for p in os.listdir(tmp_path) if p.endswith('.tmp')]


def test_refused_key_stops_the_run_and_writes_nothing(tmp_path):
  data = write_jsonl(tmp_path / 'in.jsonl', prompt_rows(LISTS))
  with chat_server.ChatServer(lambda r: chat_server.Error(401, 'bad key')) as server:
    result = cli('--input', data, '--output', tmp_path / 'out.jsonl', '--annotator=llm',
                 '--model=fake', '--base_url', server.url, '--concurrency=1')
    assert server.count() == 1
  assert result.returncode == 7
  assert result.stderr.strip() == (
      'error: the service refused a request with status 401: bad key (check the API key '
      '(--api_key or OPENAI_API_KEY)). Nothing was written; the 0 replies received are '
      f'kept in {tmp_path}/out.cache.jsonl')
  assert sorted(os.listdir(tmp_path)) == ['in.jsonl']


@pytest.mark.parametrize('args,status,message', [
    (['--annotator=llm'], 2, 'error: --annotator=llm needs --model and --api_key or '
     'OPENAI_API_KEY (any value for a service without keys)'),
    (['--annotator=rules', '--concurrency=0'], 2, 'error: --concurrency=0: expected an int >= 1'),
    (['--annotator=rules', '--output=IN'], 2, 'error: --output=IN is the input file; choose '
     'another path'),
    (['--annotator=rules', '--quantum=10', '--max_promise_tokens=15'], 2,
     'error: --max_promise_tokens=15: expected a multiple of --quantum=10'),
    (['--annotator=rules', '--tokenizer=NONE'], 2, 'error: --tokenizer=NONE: cannot load it as '
     'a tokenizer (no such file or directory)'),
    (['--annotator=rules', '--format=alpaca'], 3, "error: IN:1: does not fit the alpaca format "
     "of this file: missing field 'instruction'"),
    ([], 2, 'error: --annotator is required (see --helpshort)'),
])
def test_mistakes(tmp_path, args, status, message):
  data = write_jsonl(tmp_path / 'in.jsonl', prompt_rows(LISTS[:2]))
  fill = lambda text: text.replace('IN', data).replace('NONE', str(tmp_path / 'none'))
  result = cli('--input', data, '--output', tmp_path / 'out.jsonl', *map(fill, args),
               api_key=None)
  assert (result.returncode, result.stderr.strip()) == (status, fill(message))
  assert not (tmp_path / 'out.jsonl').exists()


def test_rules_run_named_fields_skips_and_limit(tmp_path):
  rows = [{'q': 'a', 'a': LISTS[0]}, {'q': 'b', 'a': 7}, {'q': 'c', 'a': 'plain'},
          {'q': 'd', 'a': LISTS[1]}, {'q': 'e', 'a': LISTS[2]}]
  summary, counters, out = run_job(None, tmp_path, rows, annotator='rules', on_error='skip',
                                   fields=('q', 'a'), limit=4)
  assert counters is None and 'estimates (one token per 4 characters)' in out
  assert dict(summary.outcomes) == {runner.ANNOTATED: 2, runner.UNCHANGED: 1,
                                    'skipped-bad-record': 1}
  output, rejects = read_jsonl(tmp_path / 'out.jsonl'), read_jsonl(tmp_path / 'out.rejects.jsonl')
  assert len(output) + len(rejects) == 4  # every record read has one line, once
  assert [r['prompt'] for r in output] == ['a', 'c', 'd']
  assert output[0]['annotated_response'] == (
      'Steps:\n<promise topic="wash" tokens="10"/><async>- wash\n</async>'
      '<promise topic="dry" tokens="10"/><async>- dry\n</async><sync/>\nDone.')
  assert output[0]['annotation'] == {'input': f'{tmp_path}/in.jsonl:1', 'outcome': 'annotated',
                                     'promises': 2, 'attempts': 1, 'annotator': 'rules',
                                     'lengths': 'estimated'}
  assert rejects[0]['original'] == rows[1] and "field 'a' must be a string" in rejects[0][
      'detail']
  assert not (tmp_path / 'out.cache.jsonl').exists()


def test_tokenizer_settings(tmp_path):
  tok = fixtures.synthetic_tokenizer(50)
  tok.save(str(tmp_path / 'tok.model'))
  job = job_lib.Job(input='in', output='out', annotator='rules',
                    tokenizer=str(tmp_path / 'tok.model'))
  lengths, note = job_lib.lengths_for(job)
  assert lengths.measured and lengths.tokenizer == tok and 'counted by the tokenizer' in note
  with pytest.raises(errors.UsageError, match=r'--quantum=5 disagrees with --tokenizer=.*, '
                     'whose quantum is 10; leave --quantum out'):
    job_lib.lengths_for(dataclasses.replace(job, quantum=5))
  (tmp_path / 'plain.model').write_bytes((tmp_path / 'tok.model').read_bytes())  # no sidecar
  with pytest.raises(errors.UsageError, match=r'--tokenizer=.*plain.model: cannot load it as '
                     "a tokenizer \\(.*'<unused0>'"):
    job_lib.lengths_for(dataclasses.replace(job, tokenizer=str(tmp_path / 'plain.model')))


def rules_annotate(tmp_path, examples: list[synthetic.Example]) -> list[dict]:
  """The output rows of `python -m pasta_jax.annotate --annotator=rules` (lengths
  counted by a synthetic tokenizer) over the examples' answers stripped of their tags,
  in alpaca format with their family and facts (which pass through)."""
  data = write_jsonl(tmp_path / 'plain.jsonl', [
      {'instruction': e.prompt, 'output': lang.strip(e.document()), 'family': e.family,
       'facts': e.facts} for e in examples])
  tok = fixtures.synthetic_tokenizer(50)
  tok.save(str(tmp_path / 'tok.model'))
  result = cli('--input', data, '--output', tmp_path / 'annotated.jsonl', '--annotator=rules',
               '--tokenizer', tmp_path / 'tok.model')
  assert result.returncode == 0, result.stderr
  assert 'annotated' in result.stdout and 'requests' not in result.stdout
  return read_jsonl(tmp_path / 'annotated.jsonl')


def test_rules_end_to_end_builds_a_pasta_jsonl_dataset(tmp_path):
  examples = list(synthetic.generate('train', 24))
  write_jsonl(tmp_path / 'train.jsonl', rules_annotate(tmp_path, examples))
  config = tfds_builders.PastaJsonlConfig(name='rules', paths={'train': str(tmp_path /
                                                                           'train.jsonl')})
  builder = tfds_builders.PastaJsonl(config=config, data_dir=str(tmp_path / 'tfds'),
                                     file_format=tfds_builders.FILE_FORMAT)
  builder.download_and_prepare()
  source = builder.as_data_source(split='train')
  assert len(source) == len(examples)
  from pasta_jax.data import records  # pylint: disable=g-import-not-at-top
  rows = [source[i] for i in range(len(source))]
  assert sorted(records.decode_text(r['plain_response']) for r in rows) == sorted(
      e.plain for e in examples)
  assert sorted((records.decode_text(r['family']), records.decode_text(r['facts']))
                for r in rows) == sorted((e.family, e.facts) for e in examples)
  promises = sum(len(lang.parse(records.decode_text(r['annotated_response'])).promises)
                 for r in rows)
  assert promises == sum(len(e.document().promises) for e in examples)


def jsonl_config(preset: str, paths: dict[str, str], data_dir: str, num_steps: int):
  """`configs/synth.py:preset` reading the pasta_jsonl dataset of `paths` instead of
  pasta_synth, trained `num_steps` steps (validated and saved at the last)."""
  config = synth.get_config(preset)
  config.data.name = 'pasta_jsonl'
  config.data.jsonl_name = 'synth_rules'
  config.data.jsonl_paths = ml_collections.ConfigDict(paths)
  config.data.on_error = 'fail'
  config.data.data_dir = data_dir
  config.data.batch_size = 4
  config.train.num_steps = config.eval.every_steps = num_steps
  config.checkpoint.every_steps = num_steps
  return config


fast_compiles = pytest.fixture(fixtures.fast_compiles)


@pytest.mark.slow
@pytest.mark.usefixtures('fast_compiles')
def test_rules_annotations_train_a_pasta_model_that_is_evaluated(tmp_path):
  """The whole chain: synthetic answers stripped, annotated by the rules (command
  line), built as a pasta_jsonl dataset, a tiny PASTA model and its sequential
  baseline trained on it a few steps, and `python -m pasta_jax.evaluate` on the
  held-out prompts of the dataset's test split, scored by their family's checker
  with the facts that came through the dataset."""
  # pylint: disable=g-import-not-at-top
  from pasta_jax import comparison
  from pasta_jax.training import loop
  from pasta_jax.training import metrics
  # pylint: enable=g-import-not-at-top
  train, validation = synthetic.generate('train', 24), synthetic.generate('validation', 8)
  examples = [*train, *validation]
  annotated = rules_annotate(tmp_path, examples)
  assert [r['prompt'] for r in annotated] == [e.prompt for e in examples]  # all, in order
  # The held-out prompts, families and facts the evaluation reads (their answers are
  # the plain references: the test split's responses are never read).
  test = list(synthetic.generate('test', 2))
  paths = {'train': write_jsonl(tmp_path / 'train.jsonl', annotated[:24]),
           'validation': write_jsonl(tmp_path / 'validation.jsonl', annotated[24:]),
           'test': write_jsonl(tmp_path / 'test.jsonl', [
               {'prompt': e.prompt, 'annotated_response': e.plain, 'family': e.family,
                'facts': e.facts} for e in test])}
  workdirs = {'pasta': str(tmp_path / 'pasta'), 'sequential': str(tmp_path / 'sequential')}
  # tiny_apar: the tiny model with room for the rules' longer answers.
  presets = {'pasta': 'tiny_apar', 'sequential': 'tiny_sequential'}
  results = {mode: loop.train_and_evaluate(
      jsonl_config(presets[mode], paths, str(tmp_path / 'tfds'), num_steps=3),
      workdirs[mode], stream=io.StringIO()) for mode in workdirs}
  for mode, workdir in workdirs.items():
    assert results[mode].step == 3
    with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
      data = json.load(f)['data']
    assert (data['name'], data['jsonl_name'], data['mode']) == ('pasta_jsonl', 'synth_rules',
                                                                 mode)
    assert data['jsonl_paths'] == paths
    (logged,) = [r for r in metrics.read_metrics(os.path.join(workdir, 'metrics.jsonl'))
                 if r['split'] == 'train']
    # PASTA trained on the promises' bodies as async targets; the baseline on none.
    assert logged['main_targets'] > 0
    assert (logged['async_targets'] > 0) == (mode == 'pasta')
    assert (results[mode].eval['async_targets'] > 0) == (mode == 'pasta')

  out = tmp_path / 'eval'
  result = cli(f'--pasta={workdirs["pasta"]}', f'--sequential={workdirs["sequential"]}',
               f'--out={out}', '--max_steps=32', '--cache_size=256', '--cache_stages=',
               '--round_widths=8', module='pasta_jax.evaluate', timeout=900,
               JAX_DISABLE_MOST_OPTIMIZATIONS='1')  # the tests' speed-up for tiny models
  assert result.returncode == 0, result.stderr[-3000:]
  with open(out / 'results.json', encoding='utf-8') as f:
    evaluation = json.load(f)
  rows = evaluation['prompts']
  # Every held-out prompt, read from the run's pasta_jsonl test split, in order.
  assert [(r['prompt'], r['family']) for r in rows] == [(e.prompt, e.family) for e in test]
  for row in rows:
    assert row['pasta_status'] != 'prompt_too_long' != row['baseline_status']
    # Scored by the family's checker against the facts that came through the dataset.
    for model in ('pasta', 'baseline'):
      assert 0.0 <= row[f'{model}_quality'] <= 1.0
    assert row['pasta_tokens'] == len(row['timeline']) and row['pasta_steps'] >= 1
    assert row['theoretical_speedup'] == pytest.approx(row['baseline_tokens']
                                                       / row['pasta_steps'])
    assert row['parallelism'] == pytest.approx(row['pasta_tokens'] / row['pasta_steps'])
    assert row['wallclock_speedup'] == pytest.approx(row['baseline_decode_seconds']
                                                     / row['pasta_decode_seconds'])
  summary = evaluation['summary']
  assert set(summary) == {e.family for e in test} | {'all'}
  overall = summary['all']
  assert overall['prompts'] == overall['decoded'] == len(test)
  assert overall['pasta_quality'] == pytest.approx(
      100 * sum(r['pasta_quality'] for r in rows) / len(rows))
  assert overall['theoretical_speedup'] == pytest.approx(
      comparison.geomean([r['theoretical_speedup'] for r in rows]))
  assert overall['realised_over_theoretical'] == pytest.approx(
      overall['wallclock_speedup'] / overall['theoretical_speedup'])
  assert f'| all | {len(test)} |' in result.stdout
  with open(out / 'alpaca_eval_pasta.json', encoding='utf-8') as f:
    assert [o['output'] for o in json.load(f)] == [r['pasta_text'] for r in rows]
