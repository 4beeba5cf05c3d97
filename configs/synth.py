r"""The synthetic PASTA benchmark on CPU (the project's built-in default).

Train the PASTA model and the sequential baseline (minutes on a CPU: docs/benchmarks.md;
each leaves checkpoints, its tokenizer and its config in its workdir, which
`pasta_jax.runs.load_run` reads back):

  python -m pasta_jax.train --config configs/synth.py --workdir workdir/synth_pasta
  python -m pasta_jax.train --config configs/synth.py:sequential --workdir workdir/synth_sequential

Expected: validation token accuracy above 97% on main-thread and async-thread
targets (docs/training.md has the measured numbers).

Check the data, tokenizer and layouts without training (prints a sample answer
split into threads and the theoretical speedups of the reference annotations):

  python -m pasta_jax.prepare --config configs/synth.py --workdir /tmp/pasta_synth

Presets (`configs/synth.py:NAME`):
  (none)            PASTA model, full benchmark (20000 training examples).
  sequential        the same with tags stripped and causal masks (the baseline).
  tiny              the 400-example build and the `tiny` model, a few steps: tests
                    and smoke runs.
  tiny_sequential   tiny, sequential.
  noisy             PASTA model on the `noisy` build: imperfect train/validation
                    annotations for stage 2 to fix (docs/synthetic_benchmark.md);
                    promised lengths as annotated, so wrong ones reach the model.
  tiny_noisy        tiny on the `tiny_noisy` build.
  apar              the APAR-style baseline (docs/design.md section 9): the PASTA model
                    trained on the `apar` build, whose train/validation answers are the
                    same stripped answers annotated by the rules annotator (list items
                    become promises; built offline on first use, and the build prints
                    how many answers it annotated and how many it left sequential).
  tiny_apar         tiny on the `tiny_apar` build.
Any field can be overridden, e.g. `--config.train.num_steps=200`.
"""

import ml_collections

from pasta_jax import config as config_lib

PRESETS = ('sequential', 'tiny', 'tiny_sequential', 'noisy', 'tiny_noisy', 'apar', 'tiny_apar')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  # Every field exists (pasta_jax.config.defaults()), so any can be overridden on the
  # command line; what this experiment sets is below.
  config = config_lib.defaults()
  config.seed = 0

  config.data.name = 'pasta_synth'
  # TFDS builder config of pasta_synth: 'default' (20000/500/500) or 'tiny' (400/40/40).
  config.data.tfds_config = 'default'
  # Where TFDS datasets live ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets).
  config.data.data_dir = ''
  # 'pasta' (annotated documents, PASTA masks) or 'sequential' (stripped, causal).
  config.data.mode = 'pasta'
  config.data.seq_len = 384  # the longest examples (prompt + tagged answer) are ~370 tokens
  config.data.batch_size = 8  # global; each host reads batch_size / num_hosts rows
  # Promised lengths: 'measured' re-measures each body with the tokenizer and rounds
  # up to the quantum; 'annotated' keeps the lengths written in the data.
  config.data.promise_lengths = 'measured'
  config.data.quantum = 10
  config.data.max_promise_tokens = 100
  # How a prompt is rendered before the response (BOS is prepended).
  config.data.prompt_template = '{prompt}\n'
  # Position ids of the tokens after a promise (docs/design.md section 3).
  config.data.position_strategy = 'predicted'
  config.data.fixed_reserve = 32

  config.tokenizer.vocab_size = 512
  # Texts sampled from the training split to train the tokenizer.
  config.tokenizer.num_texts = 5000

  config.interpreter.slots = 8  # thread slots per request (slot 0 = main)
  # Prompt + everything decoded; decode attention runs over every entry, so no
  # bigger than the answers need.
  config.interpreter.cache_size = 448

  # The model: every TransformerConfig field; vocab_size 0 = the tokenizer's. The
  # `tiny` preset (1.05M params, 4 layers, D=128, local/global attention) learns the
  # benchmark to >97% token accuracy within the CPU budget; a larger model is slower
  # per step and gets too few steps in it (step times: docs/benchmarks.md).
  config.model = config_lib.model_fields('tiny', vocab_size=0)

  config.optimizer.lr = 3e-3
  config.optimizer.schedule = 'cosine'
  config.optimizer.warmup_steps = 50
  config.optimizer.end_lr_factor = 0.05
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.98
  config.optimizer.weight_decay = 0.0
  config.optimizer.grad_clip_norm = 1.0
  config.optimizer.grad_accum_steps = 1

  config.train.num_steps = 1200  # ~17 examples a step: about one epoch
  config.train.log_every = 20

  config.eval.every_steps = 600
  config.eval.split = 'validation'
  config.eval.num_batches = 0  # the whole split

  config.checkpoint.every_steps = 250
  config.checkpoint.keep = 2

  config.mesh.shape = (-1, 1, 1)  # data parallel over every device

  if arg in ('tiny', 'tiny_sequential', 'tiny_noisy', 'tiny_apar'):
    config.data.tfds_config = 'tiny'
    config.tokenizer.num_texts = 400
    config.optimizer.warmup_steps = 5
    config.train.num_steps = 40
    config.train.log_every = 5
    config.eval.every_steps = 20
    config.checkpoint.every_steps = 20
  elif arg not in (None, '', 'sequential', 'noisy', 'apar'):
    raise ValueError(f"unknown preset {arg!r} for configs/synth.py (presets: "
                     f"{', '.join(repr(p) for p in PRESETS)})")
  if arg in ('sequential', 'tiny_sequential'):
    config.data.mode = 'sequential'
  if arg in ('noisy', 'tiny_noisy'):
    config.data.tfds_config = arg
    # 'measured' would re-measure every promise and erase the wrong lengths.
    config.data.promise_lengths = 'annotated'
  if arg in ('apar', 'tiny_apar'):
    config.data.tfds_config = arg
    # The rules' topics are the items' first words, written by the main thread:
    # answers are up to ~440 tokens (the reference's ~370).
    config.data.seq_len = 480
    config.interpreter.cache_size = 512
  return config
