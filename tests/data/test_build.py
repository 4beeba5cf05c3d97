"""Building pasta_jsonl datasets: bad bytes and lengths, empty splits, stale builds, the CLI."""

import collections
import json
import os
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from pasta_jax import config as config_lib
from pasta_jax import errors
from pasta_jax.data import build
from pasta_jax.data import sources
from pasta_jax.data import tfds_builders

# Long (training, subprocesses, compilation): CI runs it on the newest Python only.
pytestmark = pytest.mark.slow

GOOD = json.dumps({'prompt': 'p', 'annotated_response':
                   'a<promise topic="x" tokens="10"/><async>b</async>c'})
REPO = pathlib.Path(__file__).resolve().parents[2]


def write(path, lines: list[str | bytes]) -> str:
  path.write_bytes(b''.join((l if isinstance(l, bytes) else l.encode()) + b'\n'
                            for l in lines))
  return str(path)


def promise_line(tokens: str) -> str:
  return json.dumps({'prompt': 'p', 'annotated_response':
                     f'a<promise topic="x" tokens="{tokens}"/><async>b</async>'})


def jsonl_config(tmp_path, name: str, **kwargs) -> ml_collections.ConfigDict:
  fields = dict(name='pasta_jsonl', jsonl_name=name, data_dir=str(tmp_path / 'tfds'),
                on_error='fail', quantum=10, max_promise_tokens=100)
  return ml_collections.ConfigDict(fields | kwargs)


def test_invalid_utf8_names_the_line_and_is_skipped_under_skip(tmp_path):
  path = write(tmp_path / 'd.jsonl', [b'\xef\xbb\xbf' + GOOD.encode(),  # a BOM is fine
                                      b'{"prompt": "\xff", "annotated_response": "x"}',
                                      GOOD.encode()])
  config = tfds_builders.PastaJsonlConfig(name='x', paths={'train': path})
  with pytest.raises(tfds_builders.JsonlError) as info:
    list(tfds_builders.read_jsonl(path, config))
  assert str(info.value) == (f'{path}:2: invalid UTF-8: byte 0xff at byte 13 of the line '
                             '(save the file as UTF-8)')
  skip = tfds_builders.PastaJsonlConfig(name='x', paths={'train': path}, on_error='skip')
  skipped = collections.Counter()
  assert [n for n, _ in tfds_builders.read_jsonl(path, skip, skipped)] == [1, 3]
  assert skipped == {'invalid UTF-8': 1}


def test_promised_lengths_beyond_the_length_tokens(tmp_path):
  path = write(tmp_path / 'd.jsonl', [GOOD, promise_line('99999999999999999999999990'),
                                      promise_line('110'), promise_line('100')])
  config = tfds_builders.PastaJsonlConfig(name='x', paths={'train': path})
  with pytest.raises(tfds_builders.JsonlError, match=(
      r':2: promised length too long in annotated_response: line 1:2 \(offset 1\): '
      r'<promise> tokens=999999999999\.\.\. \(26 digits\) is absurdly large')):
    list(tfds_builders.read_jsonl(path, config))
  with pytest.raises(tfds_builders.JsonlError, match=(
      r':2: .*tokens=110 exceeds the maximum promised length 100; the length tokens stop '
      r'at max_promise_tokens=100 \(--max_promise_tokens, config.data.max_promise_tokens\)$')):
    long = write(tmp_path / 'long.jsonl', [GOOD, promise_line('110')])
    list(tfds_builders.read_jsonl(long, config))
  skip = tfds_builders.PastaJsonlConfig(name='x', paths={'train': path}, on_error='skip')
  skipped = collections.Counter()
  assert [n for n, _ in tfds_builders.read_jsonl(path, skip, skipped)] == [1, 4]
  assert skipped == {'promised length too long in annotated_response': 2}
  wider = tfds_builders.PastaJsonlConfig(name='x', paths={'train': path}, on_error='skip',
                                         max_promise_tokens=200)
  assert [n for n, _ in tfds_builders.read_jsonl(path, wider)] == [1, 3, 4]


def test_default_length_limit_is_the_training_configs():
  from pasta_jax import config  # pylint: disable=g-import-not-at-top
  assert (tfds_builders.PastaJsonlConfig(name='x').max_promise_tokens
          == config.defaults().data.max_promise_tokens)


def test_empty_split_names_split_and_file(tmp_path):
  good = write(tmp_path / 'train.jsonl', [GOOD])
  empty = write(tmp_path / 'val.jsonl', ['', '  '])
  data = jsonl_config(tmp_path, 'e', jsonl_paths={'train': good, 'validation': empty})
  with pytest.raises(errors.DataError, match=(
      rf"^split 'validation': {empty} holds no examples \(empty, or blank lines only\)")):
    build.builder(data)
  bad = write(tmp_path / 'bad.jsonl', ['{x', '[1]'])
  data = jsonl_config(tmp_path, 'b', jsonl_paths={'train': bad}, on_error='skip')
  with pytest.raises(errors.DataError, match=(
      rf"^split 'train': every line of {bad} is bad \(2 skipped: .*'invalid JSON': 1.*\); "
      'build with --on_error=fail')):
    build.builder(data)


def test_a_split_given_no_file_is_left_out(tmp_path):
  """configs/gemma_sft.py offers `test: ''`, to be filled in on the command line."""
  good = write(tmp_path / 'train.jsonl', [GOOD])
  data = jsonl_config(tmp_path, 'o', jsonl_paths={'train': good, 'test': '', 'validation': []})
  assert sorted(sources.data_sources(data, ['train'])) == ['train']
  assert sorted(build.builder(data).info.splits) == ['train']
  assert build.build_command(data, 'D') == (
      f'python -m pasta_jax.data.build --dataset=pasta_jsonl --name=o --train={good} '
      '--data_dir=D')
  with pytest.raises(config_lib.ConfigError, match=r"has no split\(s\) \['test'\]"):
    sources.data_sources(data, ['test'])


def test_changed_inputs_rebuild_or_refuse(tmp_path):
  from pasta_jax.data import sources  # pylint: disable=g-import-not-at-top
  train = write(tmp_path / 'train.jsonl', [GOOD, GOOD])
  data = jsonl_config(tmp_path, 'mine', jsonl_paths={'train': train})
  first = build.builder(data)
  assert first.info.splits['train'].num_examples == 2 and first.rebuilt == []
  assert build.builder(data).rebuilt == []  # Unchanged: reused.

  write(tmp_path / 'train.jsonl', [GOOD, GOOD, GOOD])
  with pytest.raises(errors.DataError) as info:
    sources.data_sources(data, ['train'])  # Training refuses the stale build.
  lines = str(info.value).splitlines()
  assert lines[0] == (f'dataset pasta_jsonl/mine/1.0.0 in {first.data_dir} was built from '
                      f'other inputs: {train} changed.')
  assert lines[1] == ('Rebuild it: python -m pasta_jax.data.build --dataset=pasta_jsonl '
                      f'--name=mine --train={train} --data_dir={tmp_path / "tfds"}')

  rebuilt = build.builder(data, rebuild_stale=True)
  assert rebuilt.rebuilt == [f'{train} changed']
  assert rebuilt.info.splits['train'].num_examples == 3
  assert len(sources.data_sources(data, ['train'])['train']) == 3

  data.on_error = 'skip'
  assert build.builder(data, rebuild_stale=True).rebuilt == ["on_error was 'fail', is 'skip'"]
  # A build without a record of its inputs (an older version's) is stale too.
  metadata = pathlib.Path(rebuilt.data_dir) / 'metadata.json'
  metadata.write_text(json.dumps({'skipped': {}}))
  with pytest.raises(errors.DataError, match='no record of its input files'):
    build.builder(data)


def run_build(tmp_path, *args):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  result = subprocess.run(
      [sys.executable, '-m', 'pasta_jax.data.build', '--dataset=pasta_jsonl',
       f'--data_dir={tmp_path / "tfds"}', *args],
      capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
  return result.returncode, result.stdout, result.stderr


@pytest.mark.parametrize('lines,status,message', [
    (None, 2, 'error: --train=train.jsonl: no such file'),
    ([GOOD], 2, 'error: --name=a/b: use letters, digits, "_", "." and "-" (it names a '
                'directory)'),
    ('dir', 2, 'error: --train=train.jsonl: a directory; give a JSONL file'),
    ([GOOD, '{oops'], 3, 'error: train.jsonl:2: invalid JSON: Expecting property name '
                         'enclosed in double quotes: line 1 column 2 (char 1)'),
    ([json.dumps({'prompt': 'p'})], 3, "error: train.jsonl:1: missing field: "
                                       "'annotated_response'"),
    ([GOOD, json.dumps({'prompt': 'p', 'annotated_response': 'x\n<sync>'})], 3,
     'error: train.jsonl:2: PASTA-LANG error in annotated_response: line 2:1 (offset 2): '
     "malformed <sync>: '<sync>'; write <sync/> (self-closed, no attributes)"),
    ([], 3, "error: split 'train': train.jsonl holds no examples (empty, or blank lines "
            'only); give one JSON object per line, or leave the split out'),
])
def test_cli_errors_are_one_line_with_a_status(tmp_path, lines, status, message):
  if lines == 'dir':
    (tmp_path / 'train.jsonl').mkdir()
  elif lines is not None:
    write(tmp_path / 'train.jsonl', lines)
  name = 'a/b' if message.startswith('error: --name') else 'x'
  code, _, stderr = run_build(tmp_path, f'--name={name}', '--train=train.jsonl')
  assert (code, stderr.strip().splitlines()) == (status, [message])


def test_cli_rebuilds_changed_files_and_says_so(tmp_path):
  write(tmp_path / 'train.jsonl', [GOOD])
  code, stdout, _ = run_build(tmp_path, '--name=x', '--train=train.jsonl')
  assert code == 0 and stdout.splitlines()[-1] == '  train: 1 examples'
  write(tmp_path / 'train.jsonl', [GOOD, GOOD, '{bad'])
  code, stdout, stderr = run_build(tmp_path, '--name=x', '--train=train.jsonl',
                                   '--on_error=skip')
  assert code == 0, stderr
  assert stdout.splitlines()[-2:] == [
      f'pasta_jsonl/x/1.0.0 in {tmp_path}/tfds/pasta_jsonl/x/1.0.0 (rebuilt: '
      f"{tmp_path}/train.jsonl changed; on_error was 'fail', is 'skip')",
      "  train: 2 examples; skipped 1 bad lines: {'invalid JSON': 1}"]
