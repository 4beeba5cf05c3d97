"""The first three phases of a stage-2 round (docs/design.md section 7): sample
from the round's starting model, score and pair the samples, and compute the
pairs' reference log-probs under that model. Each ends with its marker
(`common.mark`); `training.train` is the fourth.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from tqdm import auto as tqdm_auto

from pasta_jax import config as config_lib
from pasta_jax import lang
from pasta_jax.config import ConfigError
from pasta_jax.interpreter import Interpreter
from pasta_jax.preference import baseline
from pasta_jax.preference import common
from pasta_jax.preference import judged
from pasta_jax.preference import logprobs
from pasta_jax.preference import sampling
from pasta_jax.preference import scoring
from pasta_jax.training import metrics as metrics_lib
from pasta_jax.training import step as step_lib


def sample_settings(ctx: common.Context, r: int) -> dict[str, Any]:
  po = ctx.config.po
  return {'init_run': list(ctx.init), 'split': po.split, 'prompts': len(ctx.prompts),
          'num_samples': po.num_samples,
          'temperature': po.temperature, 'top_p': po.top_p, 'seed': common.round_seed(
              ctx.config.seed, r)}


def sample(ctx: common.Context, r: int, directory: str, params) -> bool:
  """Samples what is left; False when a signal stopped it between two chunks."""
  settings = sample_settings(ctx, r)
  marker = common.read_marker(directory, 'sampled')
  if marker is not None:
    common.check_settings(directory, 'sampled', marker, settings)
    return True
  po = ctx.config.po
  store = sampling.SampleStore(os.path.join(directory, common.SAMPLES_FILE), write=ctx.primary)
  wanted = sampling.Settings(n=po.num_samples, seed=settings['seed'],
                             temperature=float(po.temperature), top_p=float(po.top_p))
  if store.settings is not None and store.settings != wanted:
    raise ConfigError(f'{store.path} holds samples drawn with {store.settings}, not '
                      f'{wanted} (config.po.num_samples, temperature, top_p, seed); run '
                      'with the same config, or in a new workdir')
  done = {str(p) for p in store.done_ids}
  todo = [i for i in range(len(ctx.prompts)) if str(i) not in done]
  interp = Interpreter(ctx.model_config, params, ctx.tok,
                       config_lib.interpreter_config(ctx.config),
                       template=ctx.config.data.prompt_template, mesh=ctx.mesh,
                       rules=ctx.rules)
  bar = tqdm_auto.tqdm(total=len(ctx.prompts), initial=len(ctx.prompts) - len(todo),
                       desc=f'round {r}: sampling', unit='prompt', file=ctx.stream,
                       disable=not ctx.primary, dynamic_ncols=True)
  try:
    for start in range(0, len(todo), po.chunk_prompts):
      if ctx.stop is not None and ctx.stop.requested():
        ctx.message(f'stopped by signal {ctx.stop.signal} while sampling; '
                    f'{store.path} resumes at the next chunk')
        return False
      part = todo[start:start + po.chunk_prompts]
      sampling.sample_prompts(interp, [ctx.prompts[i] for i in part], part, po.num_samples,
                              settings['seed'], store, chunk_prompts=len(part),
                              temperature=po.temperature, top_p=po.top_p,
                              batch_size=po.sample_batch_size, log_every=0)
      bar.update(len(part))
  finally:
    bar.close()
  stats = store.stats()
  common.mark(directory, 'sampled', settings, stats=stats.to_json(),
        partial_lines=store.partial_lines)
  return True


def _pair_json(pair: scoring.Pair) -> dict[str, Any]:
  return {'prompt_id': pair.prompt_id,
          'chosen_index': pair.chosen.sample.index,
          'rejected_index': pair.rejected.sample.index,
          'chosen_score': list(pair.chosen_score),
          'rejected_score': list(pair.rejected_score), 'margin': pair.margin,
          'chosen_quality': pair.chosen.quality, 'chosen_speedup': pair.chosen.speedup,
          'rejected_quality': pair.rejected.quality,
          'rejected_speedup': pair.rejected.speedup,
          'chosen': pair.chosen.sample.annotated, 'rejected': pair.rejected.sample.annotated}


def score(ctx: common.Context, r: int, directory: str,
          writer: metrics_lib.MetricWriter) -> None:
  lam = float(ctx.config.po.lam)
  settings = dict(sample_settings(ctx, r), lam=lam, **baseline.settings(ctx),
                  **judged.settings(ctx))
  marker = common.read_marker(directory, 'scored')
  if marker is not None:
    common.check_settings(directory, 'scored', marker, settings)
    return
  store = sampling.SampleStore(os.path.join(directory, common.SAMPLES_FILE))
  by_prompt = store.samples()
  ordered = {i: by_prompt[i] for i in range(len(ctx.prompts)) if i in by_prompt}
  quality_fn, info, baseline_tokens = scoring.synthetic_quality, {}, None
  if ctx.config.po.sequential_run:
    answers = baseline.sequential_answers(ctx)  # every process decodes them
    baseline_tokens = {i: a.tokens for i, a in enumerate(answers) if a is not None}
  if ctx.config.po.quality == 'judge':
    if not ctx.primary:  # process 0 alone asks the judge and writes the round's files
      common.mark(directory, 'scored', settings)
      return
    qualities, info['judge'] = judged.judge_samples(ctx, r, directory, ordered, answers)
    quality_fn = lambda record, s: qualities[s.prompt_id, s.index]  # noqa: E731
  scored = scoring.rate(ordered, ctx.records, quality_fn, baseline_tokens)
  pairs = scoring.make_pairs(scored, lam)
  summary = scoring.summarize(scored, lam)
  lines = ''.join(json.dumps(_pair_json(p)) + '\n' for p in pairs)
  if ctx.primary:
    common.write_atomic(os.path.join(directory, common.PAIRS_FILE), lines.encode())
    common.write_atomic(os.path.join(directory, common.SUMMARY_FILE),
                  json.dumps(summary.to_json(), indent=1).encode())
  scalars = dict(summary.to_json(), prompt_too_long=len(store.prompt_too_long()))
  scalars.pop('lam')
  writer.write(0, 'samples', scalars)
  ctx.message(f'round {r}: {summary.samples} samples of {summary.prompts} prompts: mean '
              f'score {summary.mean_score:.3f}, speedup {summary.mean_speedup:.3f}, quality '
              f'{summary.mean_quality:.3f}; {summary.pairs} pairs (mean margin '
              f'{summary.mean_margin:.3f})'
              + (f'; {summary.unrated} samples without a quality ({info["judge"]})'
                 if summary.unrated else ''))
  common.mark(directory, 'scored', settings, pairs=len(pairs), **info)


def packed_pairs(ctx: common.Context, directory: str
                 ) -> tuple[logprobs.PackedPairs, list[int]]:
  """The round's pair batches (pair_index = line of pairs.jsonl), and the lines
  left out as malformed or too long; deterministic, so recomputed on resume."""
  data = ctx.config.data
  layouts, lines, left_out = [], [], []
  for i, pair in enumerate(common.read_pairs(directory)):
    try:
      layouts.append(logprobs.layout_pair(
          ctx.prompts[pair['prompt_id']], pair['chosen'], pair['rejected'], ctx.tok,
          template=data.prompt_template, promise_lengths=data.promise_lengths,
          position_strategy=config_lib.position_strategy(ctx.config)))
      lines.append(i)
    except lang.PastaLangError:
      left_out.append(i)
  po = ctx.config.po
  packed = logprobs.pack_pairs(layouts, batch_size=po.batch_size,
                               seq_len=po.seq_len or 2 * data.seq_len,
                               pairs_per_row=po.pairs_per_row, pad_id=ctx.tok.pad_id)
  lines_ = np.asarray(lines + [-1], np.int64)
  for batch in packed.batches:
    index = batch['pair_index']
    batch['pair_index'] = np.where(index >= 0, lines_[index], -1).astype(np.int32)
  left_out += [lines[i] for i in packed.too_long]
  return packed, sorted(left_out)


def reference_settings(ctx: common.Context, r: int) -> dict[str, Any]:
  po = ctx.config.po
  return dict(sample_settings(ctx, r), lam=float(po.lam),
              seq_len=po.seq_len or 2 * ctx.config.data.seq_len)


def reference(ctx: common.Context, r: int, directory: str, params) -> None:
  settings = reference_settings(ctx, r)
  marker = common.read_marker(directory, 'reference')
  if marker is not None:
    common.check_settings(directory, 'reference', marker, settings)
    return
  packed, left_out = packed_pairs(ctx, directory)
  num_pairs = len(common.read_pairs(directory))
  with step_lib.sharded(ctx.mesh, ctx.rules):
    reference = logprobs.reference_logprobs(params, packed.batches, num_pairs,
                                            model_config=ctx.model_config)
  if ctx.primary:
    path = os.path.join(directory, common.REFERENCE_FILE)
    with open(f'{path}.tmp', 'wb') as f:
      np.savez(f, **reference)
    os.replace(f'{path}.tmp', path)
  if left_out:
    ctx.message(f'round {r}: {len(left_out)} of {num_pairs} pairs left out (malformed, or '
                f'longer than config.po.seq_len={settings["seq_len"]})')
  common.mark(directory, 'reference', settings, pairs=num_pairs, left_out=left_out)

