r"""Trains a PASTA (or sequential-baseline) model: `python -m pasta_jax.train`.

  python -m pasta_jax.train --config configs/synth.py --workdir workdir/synth_pasta
  python -m pasta_jax.train --config configs/synth.py:sequential \
      --workdir workdir/synth_sequential --config.optimizer.lr=2e-3

The config file states what it runs (see its docstring); `--config.a.b=value`
overrides a field. A workdir that already holds checkpoints is resumed.
`--distributed` (or PASTA_DISTRIBUTED=1) starts multi-host JAX first
(`jax.distributed.initialize()`, e.g. on every worker of a TPU pod: see
scripts/launch_tpu_pod.sh and docs/multihost.md); `--coordinator_address`,
`--num_processes` and `--process_id` set what a cluster does not detect by
itself. The work happens in
`pasta_jax.training.loop.train_and_evaluate`; a config with a `po` section
(configs/synth_po.py) runs stage 2 instead, the preference-optimisation rounds of
`pasta_jax.preference.rounds.run_rounds`, starting from the stage-1 run
`--config.init.run`:

  python -m pasta_jax.train --config configs/synth_po.py --workdir workdir/synth_po \
      --config.init.run=workdir/synth_pasta --config.po.lam=2
"""

from __future__ import annotations

import os
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from pasta_jax import cli

_CONFIG = cli.define(config_flags.DEFINE_config_file, 'config', None,
                     'Config file (path[:preset]).', lock_config=True)
_WORKDIR = cli.define(flags.DEFINE_string, 'workdir', None,
                      'Run directory (checkpoints, logs).')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', os.environ.get('PASTA_DISTRIBUTED', '') not in ('', '0'),
    'Call jax.distributed.initialize() first (several hosts). Default: $PASTA_DISTRIBUTED.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'With --distributed: host:port of process 0 (default: '
    '$JAX_COORDINATOR_ADDRESS, or detected on Cloud TPU, SLURM, Open MPI, Kubernetes).')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'With --distributed: how many processes (default: detected).')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'With --distributed: this process, 0 = the coordinator\'s '
    '(default: detected).')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _CONFIG.value is None or _WORKDIR.value is None:
    raise app.UsageError('--config and --workdir are required')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # the bar is on stderr; -v 0 shows INFO
  import jax  # pylint: disable=g-import-not-at-top
  if _DISTRIBUTED.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  if 'po' in _CONFIG.value:
    from pasta_jax.preference import rounds  # pylint: disable=g-import-not-at-top
    rounds.run_rounds(_CONFIG.value, _WORKDIR.value)
    return
  from pasta_jax.training import loop  # pylint: disable=g-import-not-at-top
  loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  cli.run(main)
