r"""Stage 2 on the synthetic benchmark: preference-optimisation rounds (BoNBoN).

Start from a stage-1 PASTA run (configs/synth.py) and run `po.rounds` rounds of
sampling, scoring, pairing and BoNBoN training, each from the previous round's
model (docs/design.md section 7):

  python -m pasta_jax.train --config configs/synth_po.py --workdir workdir/synth_po_lam2 \
      --config.init.run=workdir/synth_pasta --config.po.lam=2

Each round writes `DIR/round_<r>/` (`pasta_jax.preference.rounds` lists the
files); a round directory is a run directory, so decoding and evaluation read it
like a stage-1 run:

  python -m pasta_jax.evaluate --pasta r1=workdir/synth_po_lam2/round_1,r2=workdir/synth_po_lam2/round_2 ...

A killed run resumes where it stopped when started again with the same command.
The model, tokenizer and the data keys that define decoding come from
`init.run`; `--config.po.lam=inf` scores by quality first, speed breaking ties.
Quality is the exact checker's; `--config.po.quality=judge` with
`--config.po.judge.model=MODEL --config.po.sequential_run=workdir/synth_sequential`
makes it an LLM judge's preference over the sequential model's answer (docs/judge.md).

Presets (`configs/synth_po.py:NAME`):
  (none)   500 preference prompts of pasta_synth, N = 10 samples each.
  tiny     the `tiny` build's 40 preference prompts, N = 4, a few updates per
           round: tests and smoke runs (start from a configs/synth.py:tiny run).
"""

import ml_collections

from pasta_jax import config as config_lib

from configs import synth

PRESETS = ('tiny',)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, '', *PRESETS):
    raise ValueError(f"unknown preset {arg!r} for configs/synth_po.py (presets: "
                     f"{', '.join(repr(p) for p in PRESETS)})")
  config = synth.get_config('tiny' if arg == 'tiny' else None)
  config.init.run = ''  # required: --config.init.run=workdir/synth_pasta

  config.po = config_lib.po_fields()
  config.po.lam = 4.0            # the paper's sweep: 1, 2, 4, 8, inf
  config.po.rounds = 2
  # 500 of the 2000 preference prompts x 10 samples: a round in about 6 minutes on
  # 2 CPU cores (docs/benchmarks.md); 0 = the whole split.
  config.po.num_prompts = 500
  config.po.num_samples = 10
  config.po.temperature = 1.0
  # On CPU a call's cost grows with its batch and it waits for its longest
  # request: 16 samples per call beat 64 (scripts/bench_sampling.py).
  config.po.sample_batch_size = 16
  config.po.chunk_prompts = 40  # 400 requests: 25 full calls of 16
  config.po.alpha = 0.1
  # beta 0.05 (an IPO margin of 1 / (2 beta) = 10 nats over about 160 target tokens),
  # lr 1e-4 and 3 epochs: the settings at which lambda moves the model. At beta 0.5,
  # lr 1e-5 and one epoch, every lambda decoded the test prompts as its SFT start did
  # (docs/benchmarks.md, "Stage 2").
  config.po.beta = 0.05
  config.po.batch_size = 8
  config.po.seq_len = 0          # 2 * data.seq_len: any pair of two answers fits a row
  config.po.pairs_per_row = 1
  config.po.train_steps = 0
  config.po.epochs = 3.0
  # Summed log-probs make the IPO term sharp: a smaller lr than stage 1's (1e-3 broke
  # the model).
  config.po.lr = 1e-4
  config.po.schedule = 'linear'
  config.po.log_every = 10
  config.po.checkpoint_every = 100

  if arg == 'tiny':
    config.po.num_prompts = 8
    config.po.num_samples = 4
    config.po.sample_batch_size = 16
    config.po.chunk_prompts = 4
    config.po.batch_size = 2
    config.po.train_steps = 3
    config.po.log_every = 1
    config.po.checkpoint_every = 2
  return config
