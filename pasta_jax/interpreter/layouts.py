"""The decode loop's weight layouts: weights a round would read transposed, made
once before the loop as transposed copies (`InterpreterConfig.hoist_layouts`).

Each is a product that contracts an axis that is not the weight's major one
(x @ W^T, or D in the middle of a [N, D, H] projection). XLA:CPU then copies the
weight into the layout its product wants, every round: for `small` that is a
sixth of the weights' bytes written again per step. `hoist` makes the copies
once; the loop's model reads them as they are stored (`models.Transformer`'s
`layouts`, a model whose einsums name the permuted axes), so the loop holds no
transpose that XLA could move, or keep, anywhere. (Transposing them back inside
the loop does not work: XLA moves the loop-invariant transposes out of the
loop, and copies the weights again inside it.)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

Permutations = dict[str, tuple[int, ...]]


def permutations(width: int, *, hoist_layouts: bool,
                 transpose_gating_einsum: bool) -> Permutations:
  """Weights a model call at `width` tokens per request reads transposed:
  parameter name -> axis permutation (none unless `hoist_layouts`;
  `InterpreterConfig.for_backend` resolves its default).

  Gemma 2/3's MLP gating (`transpose_gating_einsum`) is hoisted for wide calls
  only: a one-token call reads it as stored (a matrix-vector product is as fast
  either way, and the transposed copy makes XLA:CPU copy it back).
  """
  if not hoist_layouts:
    return {}
  perms = {'input_embedding': (1, 0), 'q_einsum': (1, 0, 2), 'kv_einsum': (2, 0, 1, 3),
           'qkv_einsum': (2, 0, 1, 3)}
  if width > 1 and transpose_gating_einsum:  # (2, F, D) -> (2, D, F)
    perms['gating_einsum'] = (0, 2, 1)
  return perms


def param_name(path: tuple[Any, ...]) -> str | None:
  """The name `permutations` and `models.Transformer`'s `layouts` give the leaf
  at `path`: its key, or for an einsum's weight ('.../q_einsum/w') its module's."""
  keys = [getattr(k, 'key', None) for k in path]
  return keys[-2] if keys[-1] == 'w' and len(keys) > 1 else keys[-1]


def hoist(params: Any, perms: Permutations,
          transpose: Callable[[jax.Array, tuple[int, ...]], jax.Array] | None = None) -> Any:
  """`params` with the leaves named in `perms` transposed by their permutation;
  the other leaves are `params`' own arrays.

  `transpose(x, perm)` makes the copies (default `jnp.transpose`; `Interpreter`
  passes a jitted transpose and keeps the result between generations).
  """
  if transpose is None:
    transpose = jnp.transpose

  def transposed(path: tuple[Any, ...], x: jax.Array) -> jax.Array:
    perm = perms.get(param_name(path))
    return x if perm is None else transpose(x, perm)
  return jax.tree_util.tree_map_with_path(transposed, params)


def model_layouts(perms: Permutations) -> tuple[tuple[str, tuple[int, ...]], ...]:
  """`perms` as the model's `layouts` argument (hashable, in a fixed order)."""
  return tuple(sorted((name, tuple(perm)) for name, perm in perms.items()))


def select(hoisted: Any, params: Any, perms: Permutations) -> Any:
  """The weights of a model call whose model reads the leaves named in `perms`
  stored permuted (`model_layouts`): those from `hoisted`, the rest `params`'."""

  def pick(path: tuple[Any, ...], x: jax.Array, original: jax.Array) -> jax.Array:
    return x if param_name(path) in perms else original
  return jax.tree_util.tree_map_with_path(pick, hoisted, params)
