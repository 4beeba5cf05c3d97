r"""The gemma library's side of scripts/bench_gemma_sampler.py; runs in the gemma venv.

    <gemma venv>/bin/python scripts/gemma_sampler_worker.py SPEC.json

Started by bench_gemma_sampler.py in the virtual environment it made for
google-deepmind's `gemma` package, which is not a dependency of pasta_jax: this
file imports only gemma, jax, numpy and the standard library, never pasta_jax.

SPEC.json (written by the benchmark) holds the model config (pasta_jax's
TransformerConfig fields), the path of an .npz of the weights ('/'-joined Gemma
param paths: `embedder/input_embedding`, `layer_0/attn/q_einsum/w`, ...), the
prompts (token ids without their BOS, which the sampler adds), the special token
ids, the forbidden tokens, the cache length and the number of new tokens.

The worker builds `gm.nn.Transformer` with the equivalent `gm.nn.config.TransformerConfig`,
checks that the weights have exactly the names and shapes of that model's
`init` (refusing them otherwise), makes a `gm.text.Sampler` (greedy, the given
cache length, prompts unpadded) and answers requests. It speaks in lines
`@@gemma {json}` on stdout (anything else there is a library's chatter):
first `{"ready": ...}` with the versions, then one reply per request line read
from stdin, `{"batch": B, "new_tokens": n, "tokens": bool}`: it samples the
first B prompts and replies `{"tokens": [[...]]}` (the sampled ids when asked,
else null). An empty line or EOF ends it. A weight tree that does not match
replies `{"error": "..."}` and exits with status 3.
"""

from __future__ import annotations

import json
import sys

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

MARK = '@@gemma '


def _reply(**message) -> None:
  print(MARK + json.dumps(message), flush=True)


def _gemma_config(gm, c: dict):
  """gm.nn.config.TransformerConfig equal to pasta_jax's TransformerConfig `c`."""
  scalar = c['query_pre_attn_scalar']
  if scalar is not None and scalar != c['head_dim']:
    raise ValueError(f'query_pre_attn_scalar {scalar}: only head_dim is mapped')
  if c['local_rope_base'] != int(c['local_rope_base']) or (
      c['global_rope_base'] != int(c['global_rope_base'])):
    raise ValueError('the gemma library takes integer RoPE base frequencies')
  cfg = gm.nn.config
  pattern = tuple(cfg.AttentionType[t.upper()] for t in c['attention_pattern'])
  return cfg.TransformerConfig(
      num_embed=c['vocab_size'], embed_dim=c['embed_dim'], hidden_dim=c['hidden_dim'],
      num_heads=c['num_heads'], head_dim=c['head_dim'], num_kv_heads=c['num_kv_heads'],
      final_logit_softcap=c['final_logit_softcap'],
      use_post_attn_norm=c['use_post_attn_norm'], use_post_ffw_norm=c['use_post_ffw_norm'],
      attention_types=cfg.make_attention_layers_types(pattern, num_layers=c['num_layers']),
      query_pre_attn_norm=cfg.QueryPreAttentionNormalisation.BY_ONE_OVER_SQRT_HEAD_DIM,
      attn_logits_soft_cap=c['attn_logits_soft_cap'],
      sliding_window_size=c['sliding_window_size'],
      transpose_gating_einsum=c['transpose_gating_einsum'], use_qk_norm=c['use_qk_norm'],
      local_base_frequency=int(c['local_rope_base']),
      global_base_frequency=int(c['global_rope_base']),
      local_scale_factor=1.0, global_scale_factor=c['global_rope_scale_factor'])


def _layout_differences(found: dict, expected: dict) -> list[str]:
  """Every missing, unexpected or mis-shaped param ('/'-joined path -> shape maps)."""
  lines = [f'missing: {p} {expected[p]}' for p in sorted(set(expected) - set(found))]
  lines += [f'unexpected: {p} {found[p]}' for p in sorted(set(found) - set(expected))]
  lines += [f'mis-shaped: {p}: given {found[p]}, the model has {expected[p]}'
            for p in sorted(set(found) & set(expected)) if found[p] != expected[p]]
  return lines


def _id_tokenizer(gm, special: dict):
  """A gm.text.Tokenizer over token ids: a prompt is its ids as text ('2 57 301')."""

  class SpecialIds:
    # The sampler stops at EOS and END_OF_TURN; both are the benchmark's EOS
    # (which it also forbids, so every request writes all its tokens).
    PAD = special['pad']
    EOS = special['eos']
    BOS = special['bos']
    UNK = special['unk']
    END_OF_TURN = special['eos']

  class IdTokenizer(gm.text.Tokenizer):
    special_tokens = SpecialIds
    VERSION = None

    def encode(self, text, *, add_bos=False, add_eos=False):
      ids = [int(t) for t in text.split()]
      return ([self.special_tokens.BOS] if add_bos else []) + ids + (
          [self.special_tokens.EOS] if add_eos else [])

    def decode(self, ids):
      return ' '.join(str(int(t)) for t in np.asarray(ids).reshape(-1))

  return IdTokenizer(path='')


def main(spec_path: str) -> int:
  from gemma import gm  # pylint: disable=g-import-not-at-top
  import gemma

  with open(spec_path, encoding='utf-8') as f:
    spec = json.load(f)
  model = gm.nn.Transformer(config=_gemma_config(gm, spec['config']), dtype=jnp.float32)
  with np.load(spec['params']) as npz:
    flat = {path: jnp.asarray(npz[path], jnp.float32) for path in npz.files}
  expected = jax.eval_shape(
      lambda: model.init(jax.random.key(0), tokens=jnp.zeros((1, 4), jnp.int32)))['params']
  differences = _layout_differences({p: tuple(x.shape) for p, x in flat.items()},
                                    {p: tuple(x.shape) for p, x in
                                     traverse_util.flatten_dict(expected, sep='/').items()})
  if differences:
    _reply(error=f'the weights do not fit gemma {gemma.__version__}\'s model: '
           + '; '.join(differences))
    return 3
  prompts = [' '.join(str(t) for t in p) for p in spec['prompts']]
  sampler = gm.text.Sampler(
      model=model, params=traverse_util.unflatten_dict(flat, sep='/'),
      tokenizer=_id_tokenizer(gm, spec['special']),
      forbidden_tokens=spec['forbidden'], cache_length=spec['cache_length'],
      max_out_length=spec['new_tokens'], pad_length=len(spec['prompts'][0]) + 1)
  _reply(ready=True, gemma=gemma.__version__, jax=jax.__version__,
         platform=jax.devices()[0].platform)
  for line in sys.stdin:
    if not line.strip():
      break
    request = json.loads(line)
    out = sampler.sample(prompts[:request['batch']], max_new_tokens=request['new_tokens'],
                         rng=0, return_state=True)
    tokens = np.asarray(out.state.predicted_tokens)  # waits for the device
    _reply(tokens=tokens[:, :request['new_tokens']].tolist() if request['tokens'] else None)
  return 0


if __name__ == '__main__':
  if len(sys.argv) != 2:
    sys.exit(f'usage: {sys.argv[0]} SPEC.json')
  sys.exit(main(sys.argv[1]))
