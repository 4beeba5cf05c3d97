"""The command lines' handling of user mistakes (`pasta_jax.cli`): one `error:` line
and the exit status of its kind, no traceback (unless --verbose). A few cases run
the real commands in a subprocess; the parsing helpers are tested directly."""

import os
import subprocess
import sys

from absl import flags
import pytest

from pasta_jax import cli
from pasta_jax import decode
from pasta_jax import errors

# Long (training, subprocesses, compilation): CI runs it on the newest Python only.
pytestmark = pytest.mark.slow

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))


def _command(*args):
  """(exit status, stderr) of `python ARGS` in the repository root."""
  env = {**os.environ, 'PYTHONPATH': ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''),
         'JAX_PLATFORMS': 'cpu'}
  result = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=ROOT)
  return result.returncode, result.stderr


@pytest.mark.parametrize('args,line', [
    (['--config=configs/nope.py'],
     "error: --config: [Errno 2] No such file or directory: 'configs/nope.py'"),
    (['--config=configs/synth.py:tiny', '--config.train.num_stpes=3'],
     "error: --config.train.num_stpes: no such config key 'num_stpes' "
     "(did you mean 'num_steps'?)"),
    (['--config=configs/synth.py:tiny', '--config.trian.num_steps=3'],
     "error: --config.trian.num_steps: no such config key 'trian' (did you mean 'train'?)"),
    (['--config=configs/synth.py:tiny', '--config.train.num_steps=abc'],
     "error: --config.train.num_steps=abc: expected an int, got 'abc'"),
    (['--config=configs/synth.py:tiny', '--config.train.num_steps=-5'],
     'error: config.train.num_steps=-5: expected an int >= 0'),
])
def test_train_config_mistakes(tmp_path, args, line):
  status, stderr = _command('-m', 'pasta_jax.train', f'--workdir={tmp_path}/run', *args)
  assert (status, stderr.strip()) == (2, line)
  assert not os.path.exists(tmp_path / 'run')


def test_decode_refuses_sampling_flags_out_of_range():
  status, stderr = _command('-m', 'pasta_jax.decode', '--workdir=/nonexistent', '--prompt=x',
                            '--temperature=-1')
  assert (status, stderr.strip()) == (
      2, 'error: --temperature=-1.0: expected a finite number >= 0 (0 = greedy)')


def test_evaluate_refuses_num_prompts_before_writing(tmp_path):
  out = tmp_path / 'eval'
  status, stderr = _command('-m', 'pasta_jax.evaluate', '--pasta=/nonexistent/a',
                            '--sequential=/nonexistent/b', f'--out={out}', '--num_prompts=0')
  assert (status, stderr.strip()) == (
      2, 'error: --num_prompts=0: expected an int >= 1')
  assert not out.exists()


def test_converter_missing_directory_and_verbose(tmp_path):
  args = ['scripts/convert_hf_checkpoint.py', f'--hf_dir={tmp_path}/hf', f'--out_dir={tmp_path}/out']
  status, stderr = _command(*args)
  assert (status, stderr.strip()) == (
      4, f'error: {tmp_path}/hf: no such directory (a Hugging Face checkpoint directory '
      'holds config.json and model*.safetensors)')
  status, stderr = _command(*args, '--verbose')
  assert status == 1 and 'Traceback' in stderr and 'HFCheckpointError' in stderr


def test_prompts_file_errors_name_the_file_and_line(tmp_path):
  with pytest.raises(errors.DataError, match=rf'^--prompts_file {tmp_path}/none: cannot '
                     'read it \\(No such file or directory\\)') as info:
    decode.read_prompts(str(tmp_path / 'none'))
  assert info.value.exit_status == 3
  path = tmp_path / 'prompts.txt'
  path.write_bytes(b'first\r\n\n  \nsecond caf\xc3\xa9\nthird \xe9t\xe9\n')
  with pytest.raises(errors.DataError, match=rf'^--prompts_file {path}, line 5: not UTF-8 '
                     r'text \(byte 0xe9 at column 7\); save the file as UTF-8$'):
    decode.read_prompts(str(path))
  path.write_bytes(b'first\r\n\n  \nsecond caf\xc3\xa9\n')
  assert decode.read_prompts(str(path)) == ['first', 'second café']


@pytest.mark.parametrize('text,argv,message', [
    ("'nope'", ['p', '--config.nope=3'], "--config.nope: no such config key 'nope'"),
    ('"\'nope\'"', ['p', '--config.train.nope'],
     "--config.train.nope: no such config key 'nope'"),
    (repr('\'trian\'\nDid you mean "train" instead of "trian"?'),
     ['p', '--workdir=w', '--config.trian.lr=1'],
     "--config.trian.lr: no such config key 'trian' (did you mean 'train'?)"),
    ("'x'", ['p'], "no such config key 'x'"),
])
def test_unknown_key_message(text, argv, message):
  assert cli.unknown_key_message(text, argv) == message


@pytest.mark.parametrize('text,line', [
    ("flag --config.a=abc: invalid literal for int() with base 10: 'abc'",
     "--config.a=abc: expected an int, got 'abc'"),
    ("flag --config.b=x: could not convert string to float: 'x'",
     "--config.b=x: expected a float, got 'x'"),
    ("Failed loading config file configs/x.py\nTraceback (most recent call last):\n  ...\n"
     "FileNotFoundError: [Errno 2] No such file", 'FileNotFoundError: [Errno 2] No such file'),
    ("Unknown command line flag 'nope'", "Unknown command line flag 'nope'"),
])
def test_flag_error_text(text, line):
  assert cli._flag_error_text(text) == line  # pylint: disable=protected-access


def test_check_flag_and_check_positive():
  values = flags.FlagValues()
  count = flags.DEFINE_integer('count', None, '', flag_values=values)
  values(['p', '--count=0'])
  with pytest.raises(errors.UsageError, match=r'^--count=0: expected an int >= 1$'):
    cli.check_positive(count)
  cli.check_flag(count, True, 'anything')
  values(['p', '--count=3'])
  cli.check_positive(count)


def test_the_command_lines_import_into_one_process():
  """They share --workdir, --config, --slots, --max_steps and --cache_size."""
  result = subprocess.run([sys.executable, '-c', 'import pasta_jax.train, pasta_jax.prepare, '
                           'pasta_jax.decode, pasta_jax.evaluate'], capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]


def test_decode_and_evaluate_share_the_interpreter_flags():
  """Both define --slots, --max_steps and --cache_size; one process imports both."""
  from pasta_jax import evaluate  # pylint: disable=g-import-not-at-top
  assert decode._DECODER.slots.name == evaluate._DECODER.slots.name == 'slots'
  values = flags.FlagValues()
  holders = {name: flags.DEFINE_integer(name, None, '', flag_values=values)
             for name in ('slots', 'max_steps', 'cache_size')}
  values(['prog', '--slots=0', '--cache_size=64'])
  decoder = cli.InterpreterFlags.__new__(cli.InterpreterFlags)
  decoder.slots, decoder.max_steps, decoder.cache_size = (
      holders['slots'], holders['max_steps'], holders['cache_size'])
  with pytest.raises(errors.UsageError, match=r'^--slots=0: expected an int >= 1$'):
    decoder.check()
  values(['prog', '--slots=4', '--cache_size=64'])
  decoder.check()
  assert decoder.overrides() == {'slots': 4, 'cache_size': 64}
