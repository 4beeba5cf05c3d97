"""pasta_jax: PASTA (learned asynchronous decoding) in JAX/Flax.

Modules: `lang` (PASTA-LANG text form), `tokens` (token form and control ids),
`tokenizer` (sentencepiece with PASTA control tokens), `masks` (the visibility
rule), `layout` (training layout), `data` (datasets), `models` (Gemma-family
decoder), `interpreter` (on-device decoding).
"""

__version__ = '0.1.0'
