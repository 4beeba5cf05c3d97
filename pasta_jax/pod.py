"""A run config's programs compiled for a TPU slice ahead of time, on any machine.

    slice_ = pod.topology('v5p:2x2x4')              # needs libtpu: pip install -e '.[tpu]'
    setup = pod.Setup.build(config, slice_)         # the mesh and rules training builds
    train = pod.compile_train_step(setup)
    train.memory.total, train.flops                 # bytes and FLOPs per device

libtpu compiles for a topology description (compile-only devices, one per chip,
in the slice's processes) without a TPU: nothing runs and no weights are read.
The programs are the real ones: the mesh, rules, state and jitted step of
`training.loop.train_and_evaluate`, lowered for abstract arguments (the state
of `training.state.abstract_state`), and the interpreter's whole generation
(`Engine.generate`, sharded as `Interpreter(mesh=..., rules=...)` shards it).
The same checks run first as in training (mesh against devices, batch against
hosts and batch shards, parameters against the mesh), raising `ConfigError`.

`python -m pasta_jax.aot` prints the per-device memory against the chip's HBM;
docs/tpu.md has the numbers of the public presets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import os
import re
import sys
import time
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np

from pasta_jax import config as config_lib
from pasta_jax import errors
from pasta_jax import tokens as tokens_lib
from pasta_jax.config import ConfigError
from pasta_jax.interpreter import api
from pasta_jax.interpreter import engine as engine_lib
from pasta_jax.interpreter import grammar
from pasta_jax.interpreter import state as interpreter_state
from pasta_jax.models import sharding as model_sharding
from pasta_jax.models import transformer
from pasta_jax.models.config import TransformerConfig
from pasta_jax.training import loop
from pasta_jax.training import partitioning
from pasta_jax.training import state as state_lib
from pasta_jax.training import step as step_lib

GiB = 1 << 30
# HBM per chip (JAX device), nominal, from Cloud TPU's system architecture pages;
# the runtime keeps a little of it for itself. v4 is compiled as megacore (one
# device per chip, both TensorCores), as JAX runs it.
CHIP_HBM_GIB = {'v4': 32, 'v5e': 16, 'v5p': 95, 'v6e': 32}
INSTALL_HINT = ("install libtpu with pip install -e '.[tpu]' (or pip install 'jax[tpu]'); "
                'it compiles for TPUs on any Linux x86-64 machine')
_NAME = re.compile(r'(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})')


@dataclasses.dataclass(frozen=True)
class Topology:
  """A TPU slice's compile-only devices.

  Attributes:
    name: the topology, e.g. 'v5e:4x4' (chip generation: chips per dimension).
    chip: 'v4', 'v5e', 'v5p' or 'v6e'.
    devices: one compile-only device per chip, in the slice's processes.
    hbm_bytes: HBM of one chip (`CHIP_HBM_GIB` unless given).
  """

  name: str
  chip: str
  devices: tuple[Any, ...]
  hbm_bytes: int

  @property
  def process_count(self) -> int:
    """Hosts of the slice (each runs one process of a pod job)."""
    return len({d.process_index for d in self.devices})


def libtpu_available() -> bool:
  """Whether libtpu (the `tpu` extra) is installed."""
  return importlib.util.find_spec('libtpu') is not None


def topology(name: str, *, hbm_gib: float | None = None) -> Topology:
  """The compile-only devices of the slice `name` ('v5e:4x4', 'v5p:2x2x4',
  'v4:2x2x2', 'v6e:2x4'); `hbm_gib` replaces the chip's nominal HBM.

  Raises:
    UsageError: libtpu is missing, or libtpu knows no such topology.
  """
  match = _NAME.fullmatch(name)
  if match is None:
    raise errors.UsageError(
        f'--topology={name}: expected GENERATION:SHAPE with a generation of '
        f'{sorted(CHIP_HBM_GIB)} and chips per dimension, e.g. v5e:4x4 (16 chips), '
        'v5p:2x2x4 (16 chips)')
  if not libtpu_available():
    raise errors.UsageError(f'compiling for --topology={name} needs libtpu: {INSTALL_HINT}')
  chip = match.group(1)
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  options = {'chip_config_name': 'megacore'} if chip == 'v4' else {}
  # libtpu takes a machine-wide lock (/tmp/libtpu_lockfile) for the local chips;
  # compile-only devices touch none, so several processes may compile at once.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  try:
    with _quiet_stderr():  # libtpu's start-up warnings about the (absent) local TPU
      description = topologies.get_topology_desc(topology_name=name, platform='tpu',
                                                 **options)
  except jax.errors.JaxRuntimeError as e:
    reason = str(e).split('\n')[0].removeprefix('INVALID_ARGUMENT: ')
    raise errors.UsageError(f'--topology={name}: libtpu refuses it: {reason}') from None
  hbm = CHIP_HBM_GIB[chip] if hbm_gib is None else hbm_gib
  return Topology(name=name, chip=chip, devices=tuple(description.devices),
                  hbm_bytes=int(hbm * GiB))


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
  """File descriptor 2 to /dev/null (C++ logging included) inside the block."""
  sys.stderr.flush()
  saved = os.dup(2)
  null = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(null, 2)
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(null)


@dataclasses.dataclass(frozen=True)
class Memory:
  """Bytes per device of a compiled program (XLA's `memory_analysis`).

  Attributes:
    arguments: the inputs (params, optimizer state, batch).
    outputs: the results.
    aliased: outputs written into donated inputs' buffers (counted once).
    temporaries: the largest set of intermediate buffers live at once.
    code: the compiled program itself.
  """

  arguments: int
  outputs: int
  aliased: int
  temporaries: int
  code: int

  @property
  def total(self) -> int:
    """The peak a device holds while the program runs."""
    return self.arguments + self.outputs - self.aliased + self.temporaries + self.code

  @classmethod
  def of(cls, compiled: jax.stages.Compiled) -> 'Memory':
    stats = compiled.memory_analysis()
    return cls(arguments=stats.argument_size_in_bytes, outputs=stats.output_size_in_bytes,
               aliased=stats.alias_size_in_bytes, temporaries=stats.temp_size_in_bytes,
               code=stats.generated_code_size_in_bytes)


@dataclasses.dataclass(frozen=True)
class Program:
  """A program compiled for the slice.

  Attributes:
    name: 'train step' or 'generation'.
    shape: what it was compiled for, in words (batch, lengths, slots).
    memory: bytes per device.
    flops: XLA's estimate of floating-point operations per device (None if it
      gives none); a loop's body is counted once.
    seconds: how long lowering and compiling took here.
    compiled: the executable (its HLO: `compiled.as_text()`).
  """

  name: str
  shape: str
  memory: Memory
  flops: float | None
  seconds: float
  compiled: jax.stages.Compiled


def _compile(name: str, shape: str, lower) -> Program:
  start = time.perf_counter()
  compiled = lower().compile()
  seconds = time.perf_counter() - start
  costs = compiled.cost_analysis()
  if isinstance(costs, (list, tuple)):  # older JAX: one dict per device program
    costs = costs[0] if costs else {}
  flops = (costs or {}).get('flops')
  return Program(name=name, shape=shape, memory=Memory.of(compiled),
                 flops=None if flops is None else float(flops), seconds=seconds,
                 compiled=compiled)


@dataclasses.dataclass(frozen=True)
class Setup:
  """What both programs share: the config, the model, the mesh over the slice and
  the logical axis rules, checked as training checks them.

  Attributes:
    config: the effective run config (`config.resolve`).
    topology: the slice.
    model_config: the model (`vocab_note` says where its vocabulary size came from).
    mesh, rules: as `train_and_evaluate` builds them.
  """

  config: ml_collections.ConfigDict
  topology: Topology
  model_config: TransformerConfig
  mesh: jax.sharding.Mesh
  rules: list[tuple]
  vocab_note: str

  @classmethod
  def build(cls, config: ml_collections.ConfigDict, slice_: Topology, *,
            vocab_size: int | None = None) -> 'Setup':
    """Raises ConfigError where training would refuse the config on this slice."""
    config = config_lib.resolve(config)
    vocab, note = (vocab_size, 'given') if vocab_size else _vocab_size(config)
    model_config = config_lib.model_config(config, vocab_size=vocab)
    mesh = partitioning.make_mesh(config.mesh.shape, slice_.devices)
    loop.check_batches(config, mesh, slice_.process_count)
    rules = config_lib.rules_for(model_config, mesh, config.mesh.rules)
    partitioning.check_params(model_config, mesh, rules)
    return cls(config=config, topology=slice_, model_config=model_config, mesh=mesh,
               rules=rules, vocab_note=note)


def _vocab_size(config: ml_collections.ConfigDict) -> tuple[int, str]:
  """(vocabulary size, where it comes from) without the training data."""
  if config.model.vocab_size:
    return config.model.vocab_size, 'config.model.vocab_size'
  if not config.tokenizer.path:
    # A trained tokenizer has at most this many pieces (fewer on a small corpus).
    return config.tokenizer.vocab_size, 'config.tokenizer.vocab_size, an upper bound'
  from pasta_jax.data import sources  # pylint: disable=g-import-not-at-top
  try:
    return sources.make_tokenizer(config, None).vocab_size, config.tokenizer.path
  except ConfigError as e:
    raise ConfigError(f'{e}; or give the vocabulary size: --config.model.vocab_size=N'
                      ) from None


def compile_train_step(setup: Setup) -> Program:
  """The training step of `train_and_evaluate` (state donated), for a global
  batch of `data.batch_size` rows of `data.seq_len` tokens."""
  config, model_config = setup.config, setup.model_config
  # The schedule's length changes constants of the program, not its shapes.
  optimizer, schedule = state_lib.make_optimizer(config.optimizer,
                                                 max(config.train.num_steps, 1))
  shardings = state_lib.state_shardings(model_config, optimizer, setup.mesh, setup.rules)
  batch_sharding = partitioning.batch_sharding(setup.mesh, setup.rules)
  train_step, _ = step_lib.jit_steps(
      model_config=model_config, optimizer=optimizer, schedule=schedule,
      grad_accum_steps=config.optimizer.grad_accum_steps, state_shardings=shardings,
      batch_sharding=batch_sharding)
  state = state_lib.abstract_state(model_config, optimizer, shardings)
  batch = step_lib.abstract_batch(config.data.batch_size, config.data.seq_len, batch_sharding)

  def lower():
    with step_lib.sharded(setup.mesh, setup.rules):
      return train_step.lower(state, batch)

  accum = config.optimizer.grad_accum_steps
  shape = (f'batch {config.data.batch_size} x {config.data.seq_len} tokens'
           + (f' in {accum} micro-batches' if accum > 1 else ''))
  return _compile('train step', shape, lower)


def generation_shape(setup: Setup, requests: int, prompt_tokens: int | None = None,
                     **interpreter: Any) -> tuple[int, int]:
  """(batch, prompt length) that the interpreter compiles for `requests` requests:
  the batch padded to a multiple of its request shards, as `Interpreter` pads
  it; the prompt `prompt_tokens`, by default the largest prompt bucket that
  leaves room in the cache to decode.

  Raises:
    UsageError: `prompt_tokens` does not fit the cache.
  """
  cache_size = config_lib.interpreter_config(setup.config, **interpreter).cache_size
  split = math.prod(setup.mesh.shape[a] for a in api.request_axes(setup.rules))
  if prompt_tokens is None:
    prompt_tokens = max((b for b in api.DEFAULT_BUCKETS if b < cache_size), default=0)
  if not 1 <= prompt_tokens < cache_size:
    raise errors.UsageError(f'prompts of {prompt_tokens} tokens do not fit a cache of '
                            f'{cache_size} entries with room to decode: expected 1 to '
                            f'{cache_size - 1} (--prompt_tokens, --cache_size)')
  return requests + -requests % split, prompt_tokens


def compile_generation(setup: Setup, requests: int, prompt_tokens: int | None = None,
                       **interpreter: Any) -> Program:
  """The interpreter's whole generation (prefill, then the decode rounds) of a
  batch of `requests` prompts of `prompt_tokens` tokens (`generation_shape`),
  with the params as the run stores them, sharded over the training mesh.

  `interpreter` overrides InterpreterConfig fields (slots, cache_size,
  max_steps, ...); the backend's defaults are the TPU's.
  """
  config, model_config, mesh, rules = (setup.config, setup.model_config, setup.mesh,
                                       setup.rules)
  icfg = config_lib.interpreter_config(config, **interpreter).for_backend('tpu')
  batch, length = generation_shape(setup, requests, prompt_tokens, **interpreter)
  engine = engine_lib.Engine(engine_lib.decoding_model(model_config), icfg,
                             _token_tables(config.data, model_config.vocab_size))
  params = jax.tree.map(
      lambda shape, sharding: jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=sharding),
      transformer.param_shapes(model_config),
      model_sharding.param_shardings(model_config, mesh, rules))
  # A batch that samples (temperature > 0): the program with the random draws,
  # a superset of an all-greedy batch's (`Requests.draws`).
  shapes = jax.eval_shape(lambda: interpreter_state.make_requests(
      np.zeros(batch, np.uint32), temperature=1.0, top_p=1.0,
      forced=interpreter_state.no_forcing(batch, engine.num_thread_ids),
      logit_bias=np.zeros(model_config.vocab_size, np.float32)))
  inputs = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=api.request_sharding(mesh, rules, len(x.shape))),
      (jax.ShapeDtypeStruct((batch, length), np.int32),
       jax.ShapeDtypeStruct((batch,), np.int32), shapes))

  # Interpreter.generate_batch's program. Without hoisted layouts (the TPU's
  # default) `Engine.hoist` returns the params themselves, so the program
  # makes them (no copy) rather than taking them twice as arguments.
  @jax.jit
  def generate(params, prompt_BT, prompt_len_B, requests):
    return engine.generate(params, prompt_BT, prompt_len_B, requests,
                           engine.new_cache(prompt_BT.shape[0]))

  def lower():
    with step_lib.sharded(mesh, rules):
      return generate.lower(params, *inputs)

  shape = (f'{batch} requests, prompts of {length} tokens, {icfg.slots} slots, '
           f'{icfg.cache_size}-entry cache')
  return _compile('generation', shape, lower)


def _token_tables(data: ml_collections.ConfigDict, vocab_size: int) -> grammar.TokenTables:
  """The grammar's tables, with the control ids laid out as a trained tokenizer lays
  them out (after pad, eos, bos and unk) and the config's length tokens. The ids
  are constants of the program: they change neither its shapes nor its memory."""
  lengths = data.max_promise_tokens // data.quantum + 1
  if vocab_size < 8 + lengths:
    raise ConfigError(f'a vocabulary of {vocab_size} ids has no room for the {4 + lengths} '
                      'PASTA control tokens and 4 special ones')
  control = tokens_lib.ControlTokens(
      promise=4, async_open=5, async_close=6, sync=7, lengths=range(8, 8 + lengths),
      eos=1, pad=0, bos=2, quantum=data.quantum)
  return grammar.TokenTables.build(control, vocab_size, unk=3)
