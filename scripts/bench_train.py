"""Train-step and input-pipeline throughput on this machine, and the cost of PASTA masks.

    python scripts/bench_train.py                       # presets tiny (configs/synth.py's) and small
    python scripts/bench_train.py --presets tiny --batch 8 --runs 10 --workers 2

For each model preset (vocabulary: a 512-id tokenizer trained here on synthetic
benchmark examples) the jitted, donated train step of `pasta_jax.training`
(AdamW, clipping, loss and metrics) runs on one packed batch [B, T] of real
synthetic-benchmark examples twice: with their PASTA metadata and with causal
metadata over the same tokens (`masks.causal_meta`: the sequential baseline's
mask). Both build the mask inside the jitted step from `AttentionMeta`, as
training does. Steps alternate between the two so that machine noise hits both;
the table has the median times (compilation excluded) and their ratio.

Beside them, the input pipeline (`pasta_jax.data.pipeline.Batches`, shuffled, with
`--workers` processes and grain's `data.prefetch` thread as training sets it up)
packs `--pipeline_batches` batches of the same shape from the same examples (in
memory); its examples/s and tokens/s (batch x seq_len slots per second, the
step's unit) and its token rate over the PASTA step's (target: >= 3; a pipeline
slower than the step would make training wait for data).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

from pasta_jax import cli
from pasta_jax import config as config_lib
from pasta_jax import errors
from pasta_jax import masks
from pasta_jax import tokenizer as tokenizer_lib
from pasta_jax.data import pipeline
from pasta_jax.data import synthetic
from pasta_jax.models import config as model_configs
from pasta_jax.models import transformer
from pasta_jax.training import partitioning
from pasta_jax.training import state as state_lib
from pasta_jax.training import step as step_lib


_PRESETS = flags.DEFINE_string('presets', 'tiny,small', 'Model presets, comma-separated.')
_BATCH = flags.DEFINE_integer('batch', 8, 'Rows per batch.')
_SEQ_LEN = flags.DEFINE_integer('seq_len', 320, 'Tokens per row.')
_RUNS = flags.DEFINE_integer('runs', 10, 'Timed steps of each kind.')
_WORKERS = flags.DEFINE_integer('workers', config_lib.defaults().data.workers,
                                'Input-pipeline worker processes (data.workers).')
_PIPELINE_BATCHES = flags.DEFINE_integer('pipeline_batches', 50,
                                         'Batches the input pipeline is timed on.')


def synthetic_records() -> tuple[list[dict[str, str]], tokenizer_lib.Tokenizer]:
  """400 synthetic training records and a 512-id tokenizer trained on them."""
  examples = list(synthetic.generate('train', 400, seed=0))
  texts = [t for e in examples for t in (e.prompt, e.plain)]
  tok = tokenizer_lib.train_tokenizer(texts, None, vocab_size=512, max_promise_tokens=100)
  return [{'prompt': e.prompt, 'annotated_response': e.annotated} for e in examples], tok


def bench_pipeline(records: list[dict[str, str]], tok: tokenizer_lib.Tokenizer, *,
                   batch: int, seq_len: int, workers: int, batches: int
                   ) -> tuple[dict, dict[str, float]]:
  """(first batch, {examples_per_s, tokens_per_s}) of the training pipeline."""
  it = pipeline.Batches(records, tok, mode='pasta', batch_size=batch, seq_len=seq_len,
                        workers=workers)
  feed = pipeline.prefetch(it, config_lib.defaults().data.prefetch)
  try:
    first = next(feed)  # starts the workers
    examples = it.stats.examples
    start = time.perf_counter()
    for _ in range(batches):
      next(feed)
    seconds = time.perf_counter() - start
    examples = it.stats.examples - examples
  finally:
    feed.close()
  return first, {'examples_per_s': examples / seconds,
                 'tokens_per_s': batches * batch * seq_len / seconds}


def causal_version(batch: dict) -> dict:
  """The same tokens with causal metadata over each whole row."""
  rows, length = batch['tokens'].shape
  meta = masks.causal_meta(length)
  out = dict(batch)
  for field in masks.AttentionMeta._fields:
    out[field] = np.broadcast_to(getattr(meta, field), (rows, length)).astype(np.int32).copy()
  return out


def bench(preset: str, batch: dict, vocab: int, runs: int) -> dict[str, float]:
  config = config_lib.resolve({'model': config_lib.model_fields(preset, vocab_size=vocab)})
  model_config = config_lib.model_config(config)
  mesh = partitioning.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  rules = config_lib.rules_for(model_config, mesh)
  optimizer, schedule = state_lib.make_optimizer(config.optimizer, 1000)
  shardings = state_lib.state_shardings(model_config, optimizer, mesh, rules)
  state = state_lib.init_state(model_config, optimizer, jax.random.key(0), shardings)
  batch_sharding = partitioning.batch_sharding(mesh, rules)
  train, _ = step_lib.jit_steps(model_config=model_config, optimizer=optimizer,
                                schedule=schedule, grad_accum_steps=1,
                                state_shardings=shardings, batch_sharding=batch_sharding)
  inputs = {'pasta': partitioning.global_batch(batch, batch_sharding),
            'causal': partitioning.global_batch(causal_version(batch), batch_sharding)}
  times = {'pasta': [], 'causal': []}
  with step_lib.sharded(mesh, rules):
    for kind in times:  # compile (one program serves both) and warm up
      state, metrics = train(state, inputs[kind])
      jax.block_until_ready(metrics)
    for i in range(2 * runs):
      kind = ('pasta', 'causal')[i % 2]
      start = time.perf_counter()
      state, metrics = train(state, inputs[kind])
      jax.block_until_ready(metrics)
      times[kind].append(time.perf_counter() - start)
  return {'params': transformer.count_params(model_config),
          **{kind: statistics.median(t) for kind, t in times.items()}}


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  unknown = sorted(set(n for n in _PRESETS.value.split(',') if n) - set(model_configs.PRESETS))
  if unknown:
    raise errors.UsageError(f'--presets: unknown presets {unknown}; presets: '
                            f'{sorted(model_configs.PRESETS)}')
  cli.check_positive(_BATCH, _SEQ_LEN, _RUNS, _PIPELINE_BATCHES)
  records, tok = synthetic_records()
  batch, feed = bench_pipeline(records, tok, batch=_BATCH.value, seq_len=_SEQ_LEN.value,
                               workers=_WORKERS.value, batches=_PIPELINE_BATCHES.value)
  info = pipeline.describe(batch)
  print(f'{jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}; '
        f'batch [{_BATCH.value}, {_SEQ_LEN.value}] of {info["examples"]:.0f} synthetic '
        f'examples ({100 * info["fill"]:.0f}% of slots used), vocab {tok.vocab_size}, '
        f'{_RUNS.value} runs each; pipeline: {_WORKERS.value} worker(s), '
        f'{_PIPELINE_BATCHES.value} batches\n', file=sys.stderr)
  print('| preset | params | causal step (ms) | PASTA step (ms) | tokens/s (PASTA) '
        '| PASTA / causal | pipeline examples/s | pipeline tokens/s | pipeline / step |')
  print('|---|---|---|---|---|---|---|---|---|')
  for preset in _PRESETS.value.split(','):
    r = bench(preset, batch, tok.vocab_size, _RUNS.value)
    step_tokens_per_s = _BATCH.value * _SEQ_LEN.value / r['pasta']
    print(f'| {preset} | {r["params"] / 1e6:.2f}M | {1e3 * r["causal"]:.0f} | '
          f'{1e3 * r["pasta"]:.0f} | {step_tokens_per_s:,.0f} | '
          f'{r["pasta"] / r["causal"]:.3f} | {feed["examples_per_s"]:,.0f} | '
          f'{feed["tokens_per_s"]:,.0f} | {feed["tokens_per_s"] / step_tokens_per_s:.1f} |',
          flush=True)


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  cli.run(main)
