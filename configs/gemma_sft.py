r"""PASTA stage-1 SFT of Gemma (the paper's recipe) and its sequential baseline.

The paper finetunes Gemma 7B on ~87K SlimOrca responses annotated with
PASTA-LANG: batch 8, learning rate 1e-5 decayed linearly to 0, 4 epochs. The
sequential baseline is the same base model finetuned on the same data with the
tags stripped. Prepare three things first:

  1. The data: JSONL files of {"prompt": ..., "annotated_response": ...}
     (docs/synthetic_benchmark.md); built into a TFDS dataset on first use.
  2. Gemma's sentencepiece model (`tokenizer.model` of the release); its
     reserved <unusedN> pieces become the PASTA control tokens.
  3. The weights, converted once from the Hugging Face release:
       python scripts/convert_hf_checkpoint.py --hf_dir gemma-7b --out_dir ckpt/gemma-7b \
           --preset gemma_7b

Then, on a host (or every worker of a TPU pod: scripts/launch_tpu_pod.sh):

  python -m pasta_jax.train --config configs/gemma_sft.py:7b --workdir runs/gemma7b_pasta \
      --config.data.jsonl_paths.train=data/train.jsonl \
      --config.data.jsonl_paths.validation=data/validation.jsonl \
      --config.data.jsonl_paths.test=data/test.jsonl \
      --config.tokenizer.path=gemma/tokenizer.model --config.init.checkpoint=ckpt/gemma-7b
  python -m pasta_jax.train --config configs/gemma_sft.py:7b_sequential \
      --workdir runs/gemma7b_sequential ...   (the same overrides)

(The test split is optional: `python -m pasta_jax.evaluate` decodes it by default.)

It trains `train.num_epochs` = 4 epochs of packed batches (the step count is
measured from the data at the start), validates every 500 steps, checkpoints
every 500 steps, and leaves a run directory that `load_run` reads.

Presets: `2b`, `7b` (PASTA), `2b_sequential`, `7b_sequential` (baseline).
Memory: float32 master weights and AdamW moments (16 bytes per parameter: 137
GB for 7B, 40 GB for 2B) plus bfloat16 activations with remat; the default mesh
shards them over every device (fsdp). The 8 rows of a batch must divide over
data x fsdp: with more than 8 devices, put the rest on the tensor axis, e.g.
`--config.mesh.shape='(1, 8, 2)'` on 16 chips.
"""

import ml_collections

from pasta_jax import config as config_lib

PRESETS = ('2b', '7b', '2b_sequential', '7b_sequential')
GEMMA_CHAT = '<start_of_turn>user\n{prompt}<end_of_turn>\n<start_of_turn>model\n'


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = arg or '2b'
  if arg not in PRESETS:
    raise ValueError(f"unknown preset {arg!r} for configs/gemma_sft.py (presets: "
                     f"{', '.join(repr(p) for p in PRESETS)})")
  size = arg.split('_')[0]
  # Every field exists (pasta_jax.config.defaults()), so any can be overridden on the
  # command line; what this experiment sets is below.
  config = config_lib.defaults()
  config.seed = 0

  config.data.name = 'pasta_jsonl'
  config.data.jsonl_name = 'pasta_sft'
  # An empty path: no such split ('test' is there to be given on the command line,
  # for `python -m pasta_jax.evaluate`, whose default split it is).
  config.data.jsonl_paths = ml_collections.ConfigDict({
      'train': 'data/train.jsonl', 'validation': 'data/validation.jsonl', 'test': ''})
  config.data.on_error = 'skip'  # drop and count bad lines (LLM annotations have some)
  config.data.data_dir = ''
  config.data.mode = 'sequential' if arg.endswith('_sequential') else 'pasta'
  config.data.seq_len = 2048
  config.data.batch_size = 8  # packed rows per step (the paper: batch 8)
  config.data.promise_lengths = 'measured'
  config.data.quantum = 10
  config.data.max_promise_tokens = 500  # LEN_0..LEN_50: 55 of Gemma's reserved pieces
  config.data.prompt_template = GEMMA_CHAT
  config.data.position_strategy = 'predicted'

  config.tokenizer.path = 'gemma/tokenizer.model'

  config.interpreter.slots = 8

  config.model = config_lib.model_fields(
      {'2b': 'gemma_2b', '7b': 'gemma_7b'}[size], dtype='bfloat16', param_dtype='float32',
      remat=True)
  config.init.checkpoint = f'ckpt/gemma-{size}'
  config.init.format = 'converted'
  config.init.trim_vocab = False

  config.optimizer.lr = 1e-5
  config.optimizer.schedule = 'linear'
  config.optimizer.warmup_steps = 0
  config.optimizer.end_lr_factor = 0.0
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.weight_decay = 0.0
  config.optimizer.grad_clip_norm = 1.0
  config.optimizer.grad_accum_steps = 1

  config.train.num_steps = 0  # derived from num_epochs
  config.train.num_epochs = 4.0
  config.train.log_every = 10

  config.eval.every_steps = 500
  config.eval.split = 'validation'
  config.eval.num_batches = 50

  config.checkpoint.every_steps = 500
  config.checkpoint.keep = 3

  config.mesh.shape = (1, -1, 1)  # fsdp over every device
  config.mesh.rules = ()  # models.sharding.default_rules
  return config
