"""Two JAX processes (4 faked CPU devices each) train, save, resume and decode
like one process with 8 devices.

The processes join through `jax.distributed.initialize` on 127.0.0.1 (CPU
collectives over gloo), each reading its own half of every batch; the mesh
(1, 4, 2) splits the params between them. The data make the comparison exact
up to float rounding: every example is longer than half a row, so each row
holds one example, a batch of 8 rows takes the next 8 examples of the shuffled
order, and two hosts (taking every other example) together read the same 8.
"""

import json
import os
import random
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from pasta_jax import config as config_lib
from pasta_jax import runs
from pasta_jax.data import build
from pasta_jax.data import sources as sources_lib
from pasta_jax.data import synthetic
from pasta_jax.preference import rounds
from pasta_jax.training import inputs

from tests.training import multiprocess_worker as worker
from tests.training.conftest import ROOT

from configs import synth

# Long (training, subprocesses, compilation): CI runs it on the newest Python only.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group('multiprocess')]

WORKER = os.path.join(ROOT, 'tests', 'training', 'multiprocess_worker.py')
TIMEOUT_S = 300  # per phase; the whole file takes one to two minutes


def _write_data(directory) -> str:
  """JSONL splits of `mixed` examples with 4 numbers counted 6 or 7 steps (their
  layouts are 150-190 tokens: each fills more than half of a 192-token row).
  The runs build the TFDS dataset."""
  os.makedirs(directory)
  for split, count in (('train', 64), ('validation', 16)):
    rows = []
    for example in synthetic.generate(split, 4000, families=('mixed',)):
      facts = json.loads(example.facts)
      if len(facts['numbers']) == 4 and facts['steps'] in (6, 7):
        rows.append({'prompt': example.prompt, 'annotated_response': example.annotated})
      if len(rows) == count:
        break
    with open(os.path.join(directory, f'{split}.jsonl'), 'w', encoding='utf-8') as f:
      f.writelines(json.dumps(row) + '\n' for row in rows)
  return str(directory)


def _free_port() -> int:
  """A port for the coordinator, free on every interface, below the kernel's
  ephemeral range: a port the kernel handed out (bind to 0) may be handed to
  another process between this check and the coordinator's bind, which then
  fails with 'Address already in use' (seen once in CI)."""
  with open('/proc/sys/net/ipv4/ip_local_port_range', encoding='utf-8') as f:
    low = int(f.read().split()[0])
  rng = random.Random()
  for port in rng.sample(range(max(1024, low - 12_000), low), 200):
    with socket.socket() as s:
      try:
        s.bind(('', port))
      except OSError:
        continue
      return port
  raise RuntimeError('no free port below the ephemeral range')


def _start(name: str, logs, args, devices: int) -> tuple[str, subprocess.Popen, str]:
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '2',
         # The resumed run reuses the programs that the 8-device run compiled.
         'JAX_COMPILATION_CACHE_DIR': str(logs.parent / 'jax_cache'),
         'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
         'PYTHONPATH': ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''),
         'XLA_FLAGS': (os.environ.get('XLA_FLAGS', '') +
                       f' --xla_force_host_platform_device_count={devices}')}
  log = str(logs / name)
  # Files, not pipes: a process blocked on a full pipe would stall its peers'
  # collectives.
  with open(log + '.out', 'w') as out, open(log + '.err', 'w') as err:
    proc = subprocess.Popen([sys.executable, WORKER, *map(str, args)], env=env, cwd=ROOT,
                            stdout=out, stderr=err)
  return name, proc, log


def _tail(log: str, lines: int = 25) -> str:
  with open(log + '.err', encoding='utf-8', errors='replace') as f:
    kept = [line for line in f if not line.startswith('[Gloo]')]
  return ''.join(kept[-lines:])


def _wait(started) -> dict[str, str]:
  """Waits for every process; fails with each one's stderr tail if any failed or
  ran out of time. Returns {name: stdout}."""
  timed_out = []
  for name, proc, _ in started:
    try:
      proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
      timed_out.append(name)
      proc.kill()
      proc.wait()
  failed = [name for name, proc, _ in started if proc.returncode != 0]
  if failed:
    report = [f'--- {name} (exit {proc.returncode}{", timed out" if name in timed_out else ""})'
              f':\n{_tail(log)}' for name, proc, log in started]
    pytest.fail(f'{", ".join(failed)} failed:\n' + '\n'.join(report), pytrace=False)
  outputs = {}
  for name, _, log in started:
    with open(log + '.out', encoding='utf-8') as f:
      outputs[name] = f.read()
  return outputs


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  """The runs, in two phases of parallel processes:

  1. `two`: 2 processes build the dataset (in a data_dir of their own) and
     train, stopped during step 3 (process 0 alone gets the signal), then
     decode with the step-3 params on a mesh over both; `one`: 1 process with 8
     devices builds the dataset and trains the same config to step 6.
  2. `resumed`: a copy of `two` resumed on 1 process (8 devices) to step 6;
     then it decodes `two`'s step-3 params on one device (the reference).
  """
  root = tmp_path_factory.mktemp('multiprocess')
  logs = root / 'logs'
  logs.mkdir()
  data = _write_data(root / 'data')
  port = _free_port()
  paths = {name: str(root / name) for name in ('two', 'one', 'resumed')}
  started = [_start(f'two.{i}', logs, ['--data', data, '--process_id', i,
                                       '--num_processes', 2, '--port', port,
                                       '--data_dir', os.path.join(data, 'tfds_two'),
                                       '--train', paths['two'], '--stop_after', 3,
                                       '--decode', paths['two'], '--step', 3, '--mesh',
                                       '--out', root / 'decoded_two.json'], devices=4)
             for i in range(2)]
  started.append(_start('one', logs, ['--data', data, '--train', paths['one']], devices=8))
  outputs = _wait(started)
  shutil.copytree(paths['two'], paths['resumed'])
  outputs |= _wait([_start('resumed', logs, [
      '--data', data, '--decode', paths['two'], '--step', 3,
      '--out', root / 'decoded_one.json', '--train', paths['resumed']], devices=8)])
  return root, data, paths, outputs


def _metrics(workdir: str, split: str) -> dict[int, dict]:
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    rows = [row for row in map(json.loads, f) if row['split'] == split]
  steps = [row['step'] for row in rows]
  assert len(steps) == len(set(steps)), f'{workdir}: a step logged twice: {steps}'
  return {row['step']: row for row in rows}


def _assert_metrics_close(a: dict, b: dict, steps):
  keys = [k for k in a[steps[0]] if k not in ('step', 'split', 'time', 'tokens_per_s',
                                              'steps_per_s')]
  for step in steps:
    for key in keys:
      np.testing.assert_allclose(a[step][key], b[step][key], rtol=2e-5, atol=1e-6,
                                 err_msg=f'step {step} {key}')


def _assert_params_close(a: str, b: str, step: int):
  x, y = runs.load_run(a, step), runs.load_run(b, step)
  for (path, u), v in zip(jax.tree_util.tree_flatten_with_path(x.params)[0],
                          jax.tree.leaves(y.params)):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=2e-5, atol=2e-6,
                               err_msg=f'step {step} {jax.tree_util.keystr(path)}')
  moved = np.abs(np.asarray(x.params['final_norm']['scale'])).max()
  assert moved > 1e-4, moved  # the steps did change the params (initially 0)


def _data_state(workdir: str, step: int, process: int, processes: int) -> dict:
  path = os.path.join(workdir, 'checkpoints', str(step), 'data',
                      f'process_{process}-of-{processes}.json')
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def test_every_example_fills_more_than_half_a_row(finished):
  """The premise of the comparisons: one example per row, whatever the hosts."""
  _, data, paths, _ = finished
  config = config_lib.resolve(worker.get_config(data))
  tok = runs.load_tokenizer(paths['one'])
  for split in ('train', 'validation'):
    source = sources_lib.data_sources(config.data, [split])[split]
    it = inputs.batches(config, source, tok, rows=4, train=False, process_index=0,
                        process_count=1)
    lengths = [len(it.example(i)) for i in range(len(source))]
    assert worker.SEQ_LEN // 2 < min(lengths) and max(lengths) <= worker.SEQ_LEN, lengths


def test_two_processes_train_like_one(finished):
  _, _, paths, outputs = finished
  # Process 1 got no signal; the collective told it to stop and save with process 0.
  for i in range(2):
    assert f'process {i}: trained to step 3, stopped by 15' in outputs[f'two.{i}']
  assert 'process 0: trained to step 6, stopped by None' in outputs['one']
  two, one = _metrics(paths['two'], 'train'), _metrics(paths['one'], 'train')
  assert sorted(two) == [1, 2, 3] and sorted(one) == list(range(1, 7))
  _assert_metrics_close(two, one, [1, 2, 3])
  assert two[3]['loss'] < two[1]['loss'] - 0.1  # the run learns: the check has teeth
  two_eval, one_eval = _metrics(paths['two'], 'eval'), _metrics(paths['one'], 'eval')
  assert sorted(two_eval) == [2] and sorted(one_eval) == [2, 4, 6]
  _assert_metrics_close(two_eval, one_eval, [2])
  # One checkpoint, written by both processes: params split between them, and
  # each host's input-pipeline state (4 rows of one example, 3 steps).
  assert os.listdir(os.path.join(paths['two'], 'checkpoints')) == ['3']
  _assert_params_close(paths['two'], paths['one'], 3)
  for i in range(2):
    state = _data_state(paths['two'], 3, i, 2)
    assert (state['process_index'], state['epoch'], state['index']) == (i, 0, 12), state
  assert _data_state(paths['one'], 3, 0, 1)['index'] == 24


def test_two_process_run_resumes_on_one_process(finished):
  _, _, paths, outputs = finished
  assert 'process 0: trained to step 6, stopped by None' in outputs['resumed']
  resumed, one = _metrics(paths['resumed'], 'train'), _metrics(paths['one'], 'train')
  assert sorted(resumed) == list(range(1, 7))  # steps 1-3 were the 2-process run's
  _assert_metrics_close(resumed, one, [4, 5, 6])
  resumed_eval, one_eval = _metrics(paths['resumed'], 'eval'), _metrics(paths['one'], 'eval')
  assert sorted(resumed_eval) == [2, 4, 6]
  _assert_metrics_close(resumed_eval, one_eval, [4, 6])
  _assert_params_close(paths['resumed'], paths['one'], 6)
  # Host 0's state mapped onto one host: 12 of its 32 examples -> 24 of 64.
  assert _data_state(paths['resumed'], 6, 0, 1) == _data_state(paths['one'], 6, 0, 1)


def test_decoding_across_processes_equals_one_device(finished):
  root, _, _, outputs = finished
  for i in range(2):
    assert f'process {i}: decoded {len(worker.PROMPTS)} prompts' in outputs[f'two.{i}']
  with open(root / 'decoded_one.json', encoding='utf-8') as f:
    expected = json.load(f)
  assert any(len({thread for _, thread, _ in r['timeline']}) > 1 for r in expected)
  for i in range(2):  # every process gets every request's result
    with open(root / f'decoded_two.json.{i}', encoding='utf-8') as f:
      got = json.load(f)
    assert len(got) == len(expected) == len(worker.PROMPTS)
    for n, (a, b) in enumerate(zip(got, expected)):
      assert (a['ids'], a['status'], a['steps'], a['timeline']) == (
          b['ids'], b['status'], b['steps'], b['timeline']), f'process {i}, prompt {n}'
      np.testing.assert_allclose(a['logits'], b['logits'], rtol=1e-4, atol=1e-4,
                                 err_msg=f'process {i}, prompt {n}')


@pytest.fixture(scope='module')
def stage_two(finished):
  """One stage-2 round from `one`'s run, in 2 processes on the mesh over both."""
  root, _, paths, _ = finished
  config = synth.get_config('tiny')
  config.data.data_dir = str(root / 'tfds_synth')
  build.builder(config.data)  # pasta_synth/tiny, with its preference split
  workdir = str(root / 'po')
  port = _free_port()
  outputs = _wait([_start(f'po.{i}', root / 'logs', [
      '--po', paths['one'], '--data_dir', config.data.data_dir, '--po_workdir', workdir,
      '--process_id', i, '--num_processes', 2, '--port', port], devices=4)
                   for i in range(2)])
  return workdir, outputs


def test_two_processes_run_a_stage_two_round_writing_each_file_once(stage_two):
  workdir, outputs = stage_two
  reports = [outputs[f'po.{i}'].strip().splitlines()[-1] for i in range(2)]
  assert reports[0].startswith('process 0: round 1 trained 2 steps on ')
  assert reports[1] == reports[0].replace('process 0', 'process 1')  # the same samples
  directory = rounds.round_dir(workdir, 1)
  # Process 0 alone appends the chunks both processes sampled: 2 lines, not 4.
  with open(os.path.join(directory, rounds.SAMPLES_FILE), encoding='utf-8') as f:
    chunks = [json.loads(line) for line in f]
  assert sorted(p for c in chunks for p in c['prompt_ids']) == [0, 1, 2, 3]
  for phase in rounds.PHASES:
    assert rounds.read_marker(directory, phase) is not None, phase
  assert not [n for n in os.listdir(directory) if n.endswith('.tmp')]
  run = runs.load_run(directory)
  assert run.step == 2
