r"""Checks that a run config fits a TPU slice, on any machine: `python -m pasta_jax.aot`.

  python -m pasta_jax.aot --config configs/gemma_sft.py:7b --topology v5p:2x2x4 \
      --config.mesh.shape='(1, 8, 2)'
  python -m pasta_jax.aot --config configs/gemma_sft.py:2b --topology v5e:2x4 \
      --generate --requests 16 --slots 8 --cache_size 4096
  python -m pasta_jax.aot --config configs/gemma_sft.py:2b --model gemma3_12b \
      --topology v5p:2x2x2

Builds the mesh the config asks for over the slice's chips, compiles the real
sharded training step (and with `--generate` the interpreter's whole generation)
from abstract parameters, and prints per device the bytes of the arguments,
outputs, temporaries and their total against the chip's HBM, and XLA's FLOPs
estimate (`pasta_jax.pod`). No TPU and no weights are needed; libtpu is
(`pip install -e '.[tpu]'`). `--model` swaps the config's architecture for
another preset, keeping its dtypes and remat. Exit status 0 when every program
fits, 1 when one does not, 2 for a mistake (an unknown topology, a mesh that
does not divide the chips, a batch that does not divide over the hosts).
docs/tpu.md has the numbers of the public presets.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

# Compiling for a topology needs no local accelerator: stay off one (a TPU VM's
# chips may be busy) and keep libtpu from probing for one (set before JAX loads).
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from pasta_jax import cli  # noqa: E402

_CONFIG = cli.define(config_flags.DEFINE_config_file, 'config', None,
                     'Config file (path[:preset]).', lock_config=True)
_TOPOLOGY = flags.DEFINE_string(
    'topology', None, 'The TPU slice, GENERATION:SHAPE (chips per dimension): v5e:2x2, '
    'v5e:4x4, v5p:2x2x1, v5p:2x2x4, v4:2x2x2, v6e:2x4, ...')
_MODEL = flags.DEFINE_string(
    'model', None, "A model preset (pasta_jax.models.config) in place of the config's "
    'architecture; the dtypes and remat stay the config\'s.')
_TRAIN = flags.DEFINE_bool('train', True, 'Compile the training step (--notrain: only '
                           'the generation).')
_GENERATE = flags.DEFINE_bool('generate', False, "Compile the interpreter's whole "
                              'generation too.')
_REQUESTS = flags.DEFINE_integer('requests', 16, 'With --generate: requests per batch '
                                 '(padded to a multiple of the request shards).')
_PROMPT_TOKENS = flags.DEFINE_integer(
    'prompt_tokens', None, 'With --generate: prompt length (default: the largest prompt '
    'bucket shorter than the cache).')
_HBM_GIB = flags.DEFINE_float('hbm_gib', None, 'HBM per chip in GiB (default: the '
                              "generation's nominal one, pasta_jax.pod.CHIP_HBM_GIB).")
_INTERPRETER = cli.InterpreterFlags()


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _CONFIG.value is None or _TOPOLOGY.value is None:
    raise app.UsageError('--config and --topology are required')
  cli.check_positive(_REQUESTS)
  _INTERPRETER.check()
  if not (_TRAIN.value or _GENERATE.value):
    raise app.UsageError('--notrain without --generate compiles nothing')
  from pasta_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from pasta_jax import pod  # pylint: disable=g-import-not-at-top
  from pasta_jax.models import config as model_config_lib  # pylint: disable=g-import-not-at-top

  config = config_lib.resolve(_CONFIG.value)
  if _MODEL.value:
    cli.check_flag(_MODEL, _MODEL.value in model_config_lib.PRESETS,
                   f'one of {sorted(model_config_lib.PRESETS)}')
    with config.unlocked():
      config.model = config_lib.model_fields(
          _MODEL.value, **{k: config.model[k] for k in ('dtype', 'param_dtype', 'remat')})
  slice_ = pod.topology(_TOPOLOGY.value, hbm_gib=_HBM_GIB.value)
  setup = pod.Setup.build(config, slice_)
  print(describe_setup(setup, _MODEL.value or ''))
  programs = []
  if _TRAIN.value:
    programs.append(pod.compile_train_step(setup))
    print(describe_program(programs[-1], slice_.hbm_bytes))
  if _GENERATE.value:
    programs.append(pod.compile_generation(setup, _REQUESTS.value, _PROMPT_TOKENS.value,
                                           **_INTERPRETER.overrides()))
    print(describe_program(programs[-1], slice_.hbm_bytes))
  too_big = [p.name for p in programs if p.memory.total > slice_.hbm_bytes]
  if too_big:
    print(f'does not fit: {", ".join(too_big)} (more chips, a mesh that shards more, or '
          'a smaller batch)')
    sys.exit(1)


def describe_setup(setup, model: str = '') -> str:
  """The slice, the model and the mesh, in three lines."""
  from pasta_jax.models import transformer  # pylint: disable=g-import-not-at-top
  slice_, m = setup.topology, setup.model_config
  chips = len(slice_.devices)
  name = f'{model}: ' if model else ''
  return '\n'.join([
      f'topology {slice_.name}: {chips} {slice_.chip} chips, {slice_.process_count} '
      f'host(s) of {chips // slice_.process_count}, {_gib(slice_.hbm_bytes)} HBM each',
      f'model {name}{_count(transformer.count_params(m))} params, {m.num_layers} layers, '
      f'vocab {m.vocab_size} ({setup.vocab_note}), params {m.param_dtype}, activations '
      f'{m.dtype}{", remat" if m.remat else ""}',
      f'mesh {dict(setup.mesh.shape)}'])


def describe_program(program, hbm_bytes: int) -> str:
  """A program's memory per device against the HBM, its FLOPs and compile time."""
  mem = program.memory
  total = mem.total
  verdict = 'fits' if total <= hbm_bytes else 'DOES NOT FIT'
  flops = 'n/a' if program.flops is None else f'{program.flops:.3g}'
  return '\n'.join([
      f'{program.name} ({program.shape}; compiled in {program.seconds:.1f} s), per device:',
      f'  arguments {_gib(mem.arguments)}, outputs {_gib(mem.outputs)} (of which '
      f'{_gib(mem.aliased)} in donated arguments), temporaries {_gib(mem.temporaries)}, '
      f'code {_gib(mem.code)}',
      f'  total {_gib(total)} of {_gib(hbm_bytes)} HBM ({100 * total / hbm_bytes:.0f}%): '
      f'{verdict}',
      f'  FLOPs {flops} (XLA estimate per device; a loop body counted once)'])


def _count(n: int) -> str:
  return f'{n / 1e9:.2f}B' if n >= 1e9 else f'{n / 1e6:.2f}M'


def _gib(n: int) -> str:
  """Bytes in GiB, or in MiB below a tenth of a GiB."""
  return f'{n / (1 << 30):.2f} GiB' if n >= (1 << 30) / 10 else f'{n / (1 << 20):.1f} MiB'


if __name__ == '__main__':
  cli.run(main)
