r"""One JAX process of a run on faked CPU devices (started by test_multiprocess.py).

  python tests/training/multiprocess_worker.py --data DIR [--data_dir TFDS_DIR] \
      --train WORKDIR [--process_id I --num_processes N --port P] [--stop_after K] \
      [--decode WORKDIR --step S [--mesh] --out FILE]
  python tests/training/multiprocess_worker.py --po INIT_RUN --data_dir TFDS_DIR \
      --po_workdir DIR [--process_id I --num_processes N --port P]

The parent sets XLA_FLAGS (the faked device count of this process) and
JAX_PLATFORMS=cpu. --train runs `python -m pasta_jax.train`'s main with this
file's `get_config(DIR)` (the dataset built in TFDS_DIR, default DIR/tfds, if
not there yet) in WORKDIR (resuming what is there); with
--num_processes > 1 it passes --distributed and a coordinator on
127.0.0.1:PORT (CPU collectives over gloo). --stop_after acts as if process 0
alone got SIGTERM during step K. Then --decode generates
`PROMPTS` with the run's checkpoint S (on a mesh over every device of every
process when --mesh, else on one device) and writes the results to FILE
(FILE.<process index> when there are several processes).

--po runs one stage-2 round (`po_config`) from the stage-1 run INIT_RUN on the
pasta_synth/tiny build in TFDS_DIR, on a mesh over every device of every process.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

import jax
import ml_collections
import numpy as np

from configs import synth

# The decoding check's prompts: one bucket; 5 requests over 4 batch shards (the
# batch is padded to 8).
PROMPTS = ('count 6 up from each: a) 12 b) 40 c) 7 d) 55',
           'count 7 up from each: a) 3 b) 81 c) 29 d) 60',
           'count 6 up from each: a) 70 b) 5 c) 33 d) 18',
           'count 7 up from each: a) 44 b) 9 c) 62 d) 21',
           'count 6 up from each: a) 1 b) 2 c) 3 d) 4')
MESH = (1, 4, 2)  # fsdp spans both processes: params are split between them
SEQ_LEN = 192


def get_config(data: str) -> ml_collections.ConfigDict:
  """configs/synth.py:tiny (2 layers) on the JSONL files in `data` (train.jsonl,
  validation.jsonl; TFDS build in data/tfds), 6 short steps."""
  c = synth.get_config('tiny')
  c.data.name = 'pasta_jsonl'
  c.data.jsonl_name = 'multihost'
  c.data.jsonl_paths = {'train': os.path.join(data, 'train.jsonl'),
                        'validation': os.path.join(data, 'validation.jsonl')}
  c.data.data_dir = os.path.join(data, 'tfds')
  c.data.seq_len = SEQ_LEN
  c.data.batch_size = 8
  c.model.num_layers = 2  # one local and one global layer: half the compile time
  c.train.num_steps = 6
  c.train.log_every = 1
  c.eval.every_steps = 2
  c.checkpoint.every_steps = 3
  c.optimizer.warmup_steps = 2
  # Adam's update stays proportional to the gradient (with eps 1e-8 it is about
  # lr * sign(g), which float noise flips where g is ~0).
  c.optimizer.eps = 1e-3
  c.mesh.shape = MESH
  return c


def po_config(init_run: str, data_dir: str) -> ml_collections.ConfigDict:
  """configs/synth_po.py:tiny on MESH: 4 prompts, 2 samples each in chunks of 2
  prompts, 2 updates of 4 pairs (2 rows per process)."""
  from configs import synth_po  # pylint: disable=g-import-not-at-top
  c = synth_po.get_config('tiny')
  c.init.run = init_run
  c.data.data_dir = data_dir
  c.data.prefetch = 0
  c.interpreter.max_steps = 48
  c.interpreter.cache_size = 160
  c.mesh.shape = MESH
  c.po.update({'num_prompts': 4, 'num_samples': 2, 'chunk_prompts': 2, 'rounds': 1,
               'sample_batch_size': 8, 'batch_size': 4, 'train_steps': 2,
               'checkpoint_every': 1, 'lr': 1e-4})
  return c


def po(args: argparse.Namespace) -> None:
  """One stage-2 round in this process (of --num_processes)."""
  from pasta_jax.preference import rounds  # pylint: disable=g-import-not-at-top
  if args.num_processes > 1:
    jax.distributed.initialize(coordinator_address=f'127.0.0.1:{args.port}',
                               num_processes=args.num_processes, process_id=args.process_id)
  result = rounds.run_rounds(po_config(args.po, args.data_dir), args.po_workdir)
  (done,) = result.rounds
  print(f'process {jax.process_index()}: round 1 trained {done.steps} steps on '
        f'{done.pairs} pairs, summary {json.dumps(done.summary, sort_keys=True)}', flush=True)


def _stop_after(k: int) -> None:
  """Process 0 alone acts as if SIGTERM arrived during step k; the others must
  learn it from `StopRequest.requested`'s collective."""
  from pasta_jax.training import loop  # pylint: disable=g-import-not-at-top

  class StopAfter(loop.StopRequest):

    def requested(self) -> bool:
      self.calls = getattr(self, 'calls', 0) + 1
      if self.calls == k and jax.process_index() == 0:
        self.signal = signal.SIGTERM
      return super().requested()

  loop.StopRequest = StopAfter


def train(args: argparse.Namespace) -> None:
  """`python -m pasta_jax.train --config THIS_FILE:DATA ...` (with --distributed and
  the coordinator's address for several processes), in this process."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from pasta_jax import train as train_main  # pylint: disable=g-import-not-at-top
  from pasta_jax.training import loop  # pylint: disable=g-import-not-at-top
  if args.stop_after:
    _stop_after(args.stop_after)
  results = []
  train_and_evaluate = loop.train_and_evaluate
  loop.train_and_evaluate = lambda *a, **k: results.append(train_and_evaluate(*a, **k))
  argv = ['train', f'--config={os.path.abspath(__file__)}:{args.data}',
          f'--workdir={args.train}']
  if args.data_dir:
    argv.append(f'--config.data.data_dir={args.data_dir}')
  if args.num_processes > 1:
    argv += ['--distributed', f'--coordinator_address=127.0.0.1:{args.port}',
             f'--num_processes={args.num_processes}', f'--process_id={args.process_id}']
  sys.argv = argv  # config_flags reads the overrides from sys.argv
  flags.FLAGS(argv)
  train_main.main(argv[:1])
  print(f'process {jax.process_index()}: trained to step {results[0].step}, stopped by '
        f'{results[0].stopped_by}', flush=True)


def decode(workdir: str, step: int, mesh: bool, out: str) -> None:
  """Samples `PROMPTS` from the params of `step` and writes what came out."""
  from pasta_jax import runs  # pylint: disable=g-import-not-at-top
  from pasta_jax.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  from pasta_jax.training import partitioning  # pylint: disable=g-import-not-at-top
  device_mesh = partitioning.make_mesh(MESH) if mesh else None
  run = runs.load_run(workdir, step, mesh=device_mesh)
  interp = Interpreter.from_run(run, mesh=device_mesh, slots=4, max_threads=4,
                                cache_size=128, max_steps=24, max_topic_tokens=2,
                                record_logits=True)
  c = run.tokenizer.control
  # Biased towards forks and joins, so that several threads decode.
  bias = {c.promise: 4.0, c.sync: 3.0, c.async_close: 3.0, **{t: 3.0 for t in c.lengths}}
  results = interp.generate(list(PROMPTS), temperature=1.0, seed=5, logit_bias=bias)
  if jax.process_count() > 1:
    out = f'{out}.{jax.process_index()}'
  with open(out, 'w', encoding='utf-8') as f:
    json.dump([{'ids': r.ids, 'status': r.status, 'steps': r.steps,
                'timeline': r.timeline, 'logits': np.asarray(r.logits).tolist()}
               for r in results], f)
  print(f'process {jax.process_index()}: decoded {len(results)} prompts', flush=True)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--data')
  parser.add_argument('--data_dir')
  parser.add_argument('--process_id', type=int, default=0)
  parser.add_argument('--num_processes', type=int, default=1)
  parser.add_argument('--port', type=int, default=0)
  parser.add_argument('--train')
  parser.add_argument('--stop_after', type=int)
  parser.add_argument('--decode')
  parser.add_argument('--step', type=int)
  parser.add_argument('--mesh', action='store_true')
  parser.add_argument('--out')
  parser.add_argument('--po')
  parser.add_argument('--po_workdir')
  args = parser.parse_args()
  jax.config.update('jax_disable_most_optimizations', True)
  # Cross-process computations on the CPU need collectives: gloo (the default
  # of recent jax versions; older ones have none unless asked).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if args.po:
    po(args)
    return
  train(args)
  if args.decode:
    decode(args.decode, args.step, args.mesh, args.out)


if __name__ == '__main__':
  main()
