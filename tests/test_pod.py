"""pasta_jax.pod and `python -m pasta_jax.aot`: a config's programs compiled for TPU
slices without a TPU (libtpu's compile-only devices), on a single-host slice
(v5e:2x2) and a multi-host one (v5e:4x4, four processes), and the memory they
report checked against the shardings."""

import importlib.util
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from pasta_jax import errors
from pasta_jax import pod
from pasta_jax.config import ConfigError

from configs import synth

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))

# Compiling needs libtpu (the `tpu` extra, which the `test` extra includes).
needs_libtpu = pytest.mark.skipif(not pod.libtpu_available(),
                                  reason=f'libtpu is not installed: {pod.INSTALL_HINT}')


def test_ci_has_libtpu():
  """CI installs the test extra: there the compile tests must run, not skip."""
  if os.environ.get('CI'):
    assert pod.libtpu_available(), pod.INSTALL_HINT


def small_config(**mesh):
  """The tiny synthetic config, two layers with a wide residual stream (so that
  fsdp shards of the weights stay whole TPU tiles), batch 16 x 64 tokens."""
  config = synth.get_config('tiny')
  config.model.num_layers = 2
  config.model.embed_dim = 2048
  config.data.seq_len = 64
  config.data.batch_size = 16
  config.mesh.shape = mesh.get('shape', (1, -1, 1))
  return config


@pytest.fixture(scope='module')
def slices():
  return {name: pod.topology(name) for name in ('v5e:2x2', 'v5e:4x4')}


@pytest.fixture(scope='module')
def compiled(slices):
  """{topology: (setup, train step, generation)} with every weight over fsdp."""
  out = {}
  for name, slice_ in slices.items():
    setup = pod.Setup.build(small_config(), slice_)
    out[name] = (setup, pod.compile_train_step(setup),
                 pod.compile_generation(setup, 16, slots=4, cache_size=128))
  return out


def shard_bytes(program) -> int:
  """Bytes of one device's shards of the program's arguments (before TPU padding)."""
  leaves = zip(jax.tree.leaves(program.compiled.in_avals),
               jax.tree.leaves(program.compiled.input_shardings))
  return sum(math.prod(s.shard_shape(a.shape)) * a.dtype.itemsize for a, s in leaves)


@needs_libtpu
def test_topologies(slices):
  one, four = slices['v5e:2x2'], slices['v5e:4x4']
  assert (len(one.devices), one.process_count, one.chip) == (4, 1, 'v5e')
  assert (len(four.devices), four.process_count) == (16, 4)
  assert four.hbm_bytes == 16 * pod.GiB
  assert pod.topology('v5p:2x2x1', hbm_gib=90).hbm_bytes == 90 * pod.GiB
  # v4 is compiled as JAX runs it: one (megacore) device per chip.
  assert len(pod.topology('v4:2x2x1').devices) == 4


@pytest.mark.parametrize('name', ['v9:2x2', 'v5e', 'v5e:4', 'tpu-v5e-16'])
def test_malformed_topology(name):
  with pytest.raises(errors.UsageError, match=r'expected GENERATION:SHAPE'):
    pod.topology(name)


@needs_libtpu
def test_topology_libtpu_refuses():
  with pytest.raises(errors.UsageError, match=r'--topology=v5e:3x3: libtpu refuses it: .*3x3'):
    pod.topology('v5e:3x3')


def test_missing_libtpu_says_how_to_get_it(monkeypatch):
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(errors.UsageError, match=r"needs libtpu: install libtpu with pip "
                     r"install -e '\.\[tpu\]'"):
    pod.topology('v5e:2x2')


@needs_libtpu
def test_setup_refuses_what_training_refuses(slices):
  four = slices['v5e:4x4']
  with pytest.raises(ConfigError, match=r'needs 3 devices; there are 16'):
    pod.Setup.build(small_config(shape=(3, 1, 1)), four)
  # Each of the 4 hosts reads its own rows: 2 batch shards cannot feed them.
  with pytest.raises(ConfigError, match=r'split over 2 shards .* there are 4 hosts'):
    pod.Setup.build(small_config(shape=(2, 1, 8)), four)
  config = small_config()
  config.data.batch_size = 8
  with pytest.raises(ConfigError, match=r'batch_size=8 is not divisible by the batch shards'):
    pod.Setup.build(config, four)


@needs_libtpu
@pytest.mark.slow
def test_programs_compile_and_fit(compiled):
  for name, (setup, train, generation) in compiled.items():
    hbm = setup.topology.hbm_bytes
    for program in (train, generation):
      memory = program.memory
      assert 0 < memory.total <= hbm, (name, program.name, memory)
      assert memory.arguments >= shard_bytes(program), (name, program.name)
      assert program.flops and program.flops > 0
    # The train state is donated: its outputs reuse its buffers.
    assert train.memory.aliased >= 0.99 * train.memory.outputs
    assert generation.memory.aliased == 0
    assert generation.shape == ('16 requests, prompts of 64 tokens, 4 slots, '
                                '128-entry cache')


@needs_libtpu
@pytest.mark.slow
def test_memory_follows_the_shardings(compiled):
  """fsdp over 4 chips, then 16: every weight, optimizer moment and batch row is
  split 4 times finer, so the arguments of a device shrink 4-fold; the
  generation's cache (an output, split over the requests) likewise."""
  (_, train4, gen4), (_, train16, gen16) = compiled['v5e:2x2'], compiled['v5e:4x4']
  assert shard_bytes(train4) == pytest.approx(4 * shard_bytes(train16), rel=0.01)
  assert train4.memory.arguments == pytest.approx(4 * train16.memory.arguments, rel=0.05)
  assert train16.memory.arguments < 1.05 * shard_bytes(train16)  # little tile padding
  # The generation's cache: per layer k and v of [requests, 128, kv_heads, head_dim].
  model = compiled['v5e:2x2'][0].model_config
  cache = 2 * model.num_layers * 16 * 128 * model.num_kv_heads * model.head_dim * 4
  assert gen4.memory.outputs >= cache / 4 and gen16.memory.outputs >= cache / 16
  assert gen4.memory.outputs == pytest.approx(4 * gen16.memory.outputs, rel=0.25)


@needs_libtpu
def test_generation_batch_is_padded_to_the_request_shards(slices):
  setup = pod.Setup.build(small_config(), slices['v5e:4x4'])
  assert pod.generation_shape(setup, 5) == (16, 256)  # largest bucket within 448
  assert pod.generation_shape(setup, 17, 100, cache_size=128) == (32, 100)
  with pytest.raises(errors.UsageError, match=r'prompts of 128 tokens do not fit a cache '
                     r'of 128 entries'):
    pod.generation_shape(setup, 16, 128, cache_size=128)


def _aot(*args):
  """(exit status, stdout, stderr) of `python -m pasta_jax.aot ARGS`."""
  env = {**os.environ, 'PYTHONPATH': ROOT + os.pathsep + os.environ.get('PYTHONPATH', '')}
  result = subprocess.run([sys.executable, '-m', 'pasta_jax.aot', *args],
                          capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
  return result.returncode, result.stdout, result.stderr


@needs_libtpu
@pytest.mark.slow  # subprocesses
@pytest.mark.parametrize('args, line', [
    (['--topology=v5e:3x3'], 'error: --topology=v5e:3x3: libtpu refuses it: Topology '
     'layout "v5e:3x3" is not divisible by the given (or default) chips_per_host_bounds '
     '"2x2x1"'),
    (['--topology=v5e:2x2', "--config.mesh.shape=(1,3,1)"],
     'error: config.mesh.shape=(1, 3, 1) needs 3 devices; there are 4 (use -1 on one '
     'axis to take the rest)'),
    (['--topology=v5e:2x2', '--model=gemma_9b'],
     "error: --model=gemma_9b: expected one of ['base100m', 'gemma2_27b', 'gemma2_2b', "),
])
def test_command_mistakes(args, line):
  status, stdout, stderr = _aot('--config=configs/synth.py:tiny', *args)
  assert status == 2 and stderr.strip().startswith(line), stderr
  assert not stdout


@needs_libtpu
@pytest.mark.slow
def test_command_exits_1_when_a_program_does_not_fit():
  status, stdout, stderr = _aot(
      '--config=configs/synth.py:tiny', '--topology=v5e:2x2', '--notrain', '--generate',
      '--requests=4', '--slots=2', '--cache_size=64', '--config.model.num_layers=2',
      '--hbm_gib=0.001')
  assert status == 1, stderr
  lines = stdout.splitlines()
  assert lines[0] == 'topology v5e:2x2: 4 v5e chips, 1 host(s) of 4, 1.0 MiB HBM each'
  assert lines[2] == "mesh {'data': 4, 'fsdp': 1, 'tensor': 1}"
  assert lines[3].startswith('generation (4 requests, prompts of 32 tokens, 2 slots, '
                             '64-entry cache; compiled in ')
  assert 'DOES NOT FIT' in lines[5]
  assert lines[-1].startswith('does not fit: generation')
  assert not stderr.strip()  # libtpu's start-up warnings are kept out
  total = float(lines[5].split()[1])
  assert total > 1.0 and np.isfinite(total)
