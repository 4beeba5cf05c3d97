"""Gemma-family decoder (Flax Linen) with explicit positions, masks and KV cache.

    from pasta_jax import models
    config = models.get_config('tiny', vocab_size=1024)
    params = models.init_params(config, jax.random.key(0))
    logits, cache = models.Transformer(config).apply(
        {'params': params}, tokens_BT, positions_BT, (query_meta, key_meta),
        cache=cache, cache_index=cache_index_BT)

The KV cache: `pasta_jax.models.cache`; checkpoints: `pasta_jax.models.checkpoint`
(orbax) and `pasta_jax.models.hf` (Hugging Face); sharding rules:
`pasta_jax.models.sharding`. See docs/models.md.
"""

from pasta_jax.models.cache import (LayerCache, cache_length,
                                    cache_logical_axes, grow_cache, init_cache,
                                    write_entries)
from pasta_jax.models.config import (CPU_PRESETS, PRESETS, PUBLIC_PRESETS,
                                     AttentionType, TransformerConfig,
                                     get_config)
from pasta_jax.models.transformer import (Transformer, attention_mask,
                                          count_params, init_params,
                                          logical_axes, param_shapes)

__all__ = [
    'AttentionType', 'CPU_PRESETS', 'LayerCache', 'PRESETS', 'PUBLIC_PRESETS',
    'Transformer', 'TransformerConfig', 'attention_mask', 'cache_length',
    'cache_logical_axes', 'count_params', 'get_config', 'grow_cache', 'init_cache',
    'init_params', 'logical_axes', 'param_shapes', 'write_entries',
]
