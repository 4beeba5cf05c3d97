"""The Gemma stand-ins: the tokenizer wraps like Gemma's, and the random Hugging Face
checkpoint converts back to the params it was written from."""

import jax
import numpy as np

from pasta_jax import lang
from pasta_jax import standins
from pasta_jax import tokenizer as tokenizer_lib
from pasta_jax.data import synthetic
from pasta_jax.models import config as model_config_lib
from pasta_jax.models import hf
from pasta_jax.models import transformer


def test_stand_in_tokenizer_and_checkpoint(tmp_path):
  texts = [t for e in synthetic.generate('train', 40) for t in (e.prompt, e.plain)]
  path = standins.gemma_style_tokenizer(tmp_path / 'tokenizer.model', texts)
  tok = tokenizer_lib.Tokenizer.from_pretrained(path, max_promise_tokens=500)
  assert tok.pieces.promise == '<unused0>' and tok.control.promise == 4  # after pad/eos/bos/unk
  example = next(iter(synthetic.generate('test', 1)))
  assert lang.strip(tok.decode(tok.encode(example.annotated))) == example.plain

  config = model_config_lib.get_config('tiny', vocab_size=tok.vocab_size)
  hf_dir = standins.random_hf_checkpoint(tmp_path / 'hf', config, seed=3)
  loaded_config, params = hf.load_hf_checkpoint(hf_dir, config)
  assert loaded_config == config
  expected = transformer.init_params(config, jax.random.key(3))
  assert jax.tree.structure(params) == jax.tree.structure(expected)
  jax.tree.map(np.testing.assert_array_equal, params, expected)
  _, derived = hf.config_from_dir(hf_dir)
  assert (derived.num_layers, derived.vocab_size, derived.attention_pattern) == (
      config.num_layers, config.vocab_size, config.attention_pattern)
