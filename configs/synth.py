"""The synthetic PASTA benchmark on CPU (the project's built-in default).

Run (prepares the data and tokenizer, checks every example end to end and prints
what it made: a sample annotated answer with its threads, and per-family counts,
token lengths and the theoretical speedups of the reference annotations):

  python -m pasta_jax.prepare --config configs/synth.py --workdir /tmp/pasta_synth

Presets: `configs/synth.py:tiny` (the 400-example build of the dataset, for tests
and smoke runs); the default is the full benchmark (20000 training examples). Any field can be overridden on the
command line, e.g. `--config.data.num_train=5000`.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.name = 'pasta_synth'
  # TFDS builder config of pasta_synth: 'default' (20000/500/500) or 'tiny' (400/40/40).
  config.data.tfds_config = 'default'
  # Where TFDS datasets live ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets).
  config.data.data_dir = ''
  # 'pasta' (annotated documents, PASTA masks) or 'sequential' (stripped, causal).
  config.data.mode = 'pasta'
  config.data.seq_len = 320
  config.data.batch_size = 16  # global; each host reads batch_size / num_hosts rows
  # Promised lengths: 'measured' re-measures each body with the tokenizer and rounds
  # up to the quantum; 'annotated' keeps the lengths written in the data.
  config.data.promise_lengths = 'measured'
  config.data.quantum = 10
  config.data.max_promise_tokens = 100
  # How a prompt is rendered before the response (BOS is prepended).
  config.data.prompt_template = '{prompt}\n'
  # Position ids of the tokens after a promise (PASTA.md section 3).
  config.data.position_strategy = 'predicted'
  config.data.fixed_reserve = 32

  config.tokenizer = ml_collections.ConfigDict()
  config.tokenizer.vocab_size = 512
  # Texts sampled from the training split to train the tokenizer.
  config.tokenizer.num_texts = 5000

  config.interpreter = ml_collections.ConfigDict()
  config.interpreter.slots = 8  # thread slots per request (slot 0 = main)

  if arg == 'tiny':
    config.data.tfds_config = 'tiny'
    config.tokenizer.num_texts = 400
  elif arg not in (None, ''):
    raise ValueError(f"unknown preset {arg!r} for configs/synth.py (presets: 'tiny')")
  return config
