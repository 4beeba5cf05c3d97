"""configs/gemma_sft.py: presets, and its whole path on a miniature: JSONL data, a
Gemma-style sentencepiece model (reserved <unusedN> pieces) and a converted checkpoint."""

import json

import jax
import numpy as np
import pytest

from pasta_jax import config as config_lib
from pasta_jax import runs
from pasta_jax import standins
from pasta_jax import tokenizer as tokenizer_lib
from pasta_jax.data import synthetic
from pasta_jax.models import checkpoint as model_checkpoint
from pasta_jax.models import config as model_config_lib
from pasta_jax.models import transformer
from pasta_jax.training import loop

from configs import gemma_sft


@pytest.mark.parametrize('preset, layers, mode', [
    ('2b', 18, 'pasta'), ('7b', 28, 'pasta'), ('2b_sequential', 18, 'sequential'),
    ('7b_sequential', 28, 'sequential'), (None, 18, 'pasta')])
def test_presets(preset, layers, mode):
  config = config_lib.resolve(gemma_sft.get_config(preset))
  model = config_lib.model_config(config, vocab_size=256_000)
  assert model.num_layers == layers and model.vocab_size == 256_000
  assert (model.dtype, model.param_dtype, model.remat) == ('bfloat16', 'float32', True)
  assert config.data.mode == mode and config.data.batch_size == 8
  opt = config.optimizer
  assert (opt.lr, opt.schedule, opt.end_lr_factor) == (1e-5, 'linear', 0.0)
  assert (config.train.num_steps, config.train.num_epochs) == (0, 4.0)
  assert config.data.prompt_template.startswith('<start_of_turn>user\n{prompt}')
  with pytest.raises(ValueError, match="unknown preset '9b'"):
    gemma_sft.get_config('9b')


def test_finetune_from_a_converted_checkpoint(tmp_path):
  paths, texts = {}, []
  for split, n in (('train', 48), ('validation', 8)):
    examples = synthetic.generate(split, n, seed=3)
    paths[split] = str(tmp_path / f'{split}.jsonl')
    with open(paths[split], 'w') as f:
      for e in examples:
        f.write(json.dumps({'prompt': e.prompt, 'annotated_response': e.annotated}) + '\n')
        texts += [e.prompt, e.plain]
  tok_path = standins.gemma_style_tokenizer(tmp_path / 'gemma.model', texts, vocab_size=700)
  tok = tokenizer_lib.Tokenizer.from_pretrained(tok_path, max_promise_tokens=500)
  base = model_config_lib.get_config('tiny', vocab_size=tok.vocab_size)
  base_params = transformer.init_params(base, jax.random.key(7))
  model_checkpoint.save_converted(str(tmp_path / 'ckpt'), base_params, base)

  config = gemma_sft.get_config('2b')
  config.data.jsonl_paths = paths
  config.data.data_dir = str(tmp_path / 'tfds')
  config.data.seq_len = 384
  config.data.batch_size = 4
  config.tokenizer.path = tok_path
  config.init.checkpoint = str(tmp_path / 'ckpt')
  config.model = config_lib.model_fields('tiny', vocab_size=0)
  config.optimizer.lr = 1e-12  # the params must stay the checkpoint's
  config.train.num_epochs = 1.0
  config.eval.num_batches = 1
  workdir = str(tmp_path / 'run')
  result = loop.train_and_evaluate(config, workdir)

  run = runs.load_run(workdir)
  # One epoch of 48 examples of ~100-300 tokens, packed into 4 x 384 rows.
  assert 3 <= run.config.train.num_steps <= 12 and result.step == run.config.train.num_steps
  assert run.tokenizer == tok and run.model_config == base
  for x, y in zip(jax.tree.leaves(run.params), jax.tree.leaves(base_params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-8)
  assert result.eval['async_targets'] > 0
