"""Train-step throughput on this machine, and the cost of PASTA masks over causal ones.

    python scripts/bench_train.py                       # presets tiny (configs/synth.py's) and small
    python scripts/bench_train.py --presets tiny --batch 8 --runs 10

For each model preset (vocabulary: a 512-id tokenizer trained here on synthetic
benchmark examples) the jitted, donated train step of `pasta_jax.training`
(AdamW, clipping, loss and metrics) runs on one packed batch [B, T] of real
synthetic-benchmark examples twice: with their PASTA metadata and with causal
metadata over the same tokens (`masks.causal_meta`: the sequential baseline's
mask). Both build the mask inside the jitted step from `AttentionMeta`, as
training does. Steps alternate between the two so that machine noise hits both;
the table has the median times (compilation excluded) and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np

from pasta_jax import config as config_lib
from pasta_jax import masks
from pasta_jax import tokenizer as tokenizer_lib
from pasta_jax.data import pipeline
from pasta_jax.data import synthetic
from pasta_jax.models import transformer
from pasta_jax.training import partitioning
from pasta_jax.training import state as state_lib
from pasta_jax.training import step as step_lib


def pasta_batch(batch: int, seq_len: int) -> tuple[dict, int]:
  """A packed PASTA batch of synthetic examples, and the tokenizer's vocab size."""
  examples = list(synthetic.generate('train', 400, seed=0))
  texts = [t for e in examples for t in (e.prompt, e.plain)]
  tok = tokenizer_lib.train_tokenizer(texts, None, vocab_size=512, max_promise_tokens=100)
  records = [{'prompt': e.prompt, 'annotated_response': e.annotated} for e in examples]
  it = pipeline.Batches(records, tok, mode='pasta', batch_size=batch, seq_len=seq_len)
  return next(it), tok.vocab_size


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


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--presets', default='tiny,small')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--seq_len', type=int, default=320)
  parser.add_argument('--runs', type=int, default=10)
  args = parser.parse_args(argv)
  batch, vocab = pasta_batch(args.batch, args.seq_len)
  info = pipeline.describe(batch)
  print(f'{jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}; '
        f'batch [{args.batch}, {args.seq_len}] of {info["examples"]:.0f} synthetic examples '
        f'({100 * info["fill"]:.0f}% of slots used), vocab {vocab}, {args.runs} runs each\n',
        file=sys.stderr)
  print('| preset | params | causal step (ms) | PASTA step (ms) | tokens/s (PASTA) '
        '| PASTA / causal |')
  print('|---|---|---|---|---|---|')
  for preset in args.presets.split(','):
    r = bench(preset, batch, vocab, args.runs)
    tokens = args.batch * args.seq_len
    print(f'| {preset} | {r["params"] / 1e6:.2f}M | {1e3 * r["causal"]:.0f} | '
          f'{1e3 * r["pasta"]:.0f} | {tokens / r["pasta"]:,.0f} | '
          f'{r["pasta"] / r["causal"]:.3f} |', flush=True)


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  main()
