"""Skeleton-of-Thought-style decoding of any run (docs/design.md section 9).

Prompting only, no training, in the same interpreter:

1. **Skeleton.** The model decodes sequentially (greedy, the interpreter in
   sequential mode, whatever the run's mode) the prompt followed by
   `SotConfig.skeleton_suffix`; the skeleton is the first list of that output
   (numbered, lettered or bulleted items, 2 or more: the rules annotator's list
   rule, `annotation.rules`), each item a point whose topic is its first words.
2. **Expansion.** The interpreter in PASTA mode decodes the prompt, the suffix
   and the skeleton as context, with the main thread forced to write the text
   the skeleton had before its list, then `<promise topic="POINT" tokens="N"/>`
   per point and `<sync/>` (`Interpreter.prefix_forcing`): every point grows in
   its own async thread, which sees the prompt, the skeleton and the promises
   up to its own; after the sync the main thread decodes freely (no further
   promises), seeing every expansion.

A prompt whose skeleton has no list, or whose expansion context does not fit the
interpreter, falls back to the plain answer (the sequential decode of the
prompt); `SkeletonOfThought.outcomes` counts each case. The cost of a prompt is
both phases: steps, tokens and seconds of the skeleton plus those of the
expansion (or of the plain answer; with an empty suffix and the run's budget
the skeleton phase *is* the plain decode, so its answer is the plain answer,
paid for once).

`SkeletonOfThought` decodes like an `Interpreter` for `comparison.evaluate_many`
(`generate_timed`), so `python -m pasta_jax.evaluate --sot NAME=RUN` tabulates it
as any PASTA run.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import numpy as np

from pasta_jax import lang
from pasta_jax.annotation import rules
from pasta_jax.interpreter import Interpreter
from pasta_jax.interpreter import api as interpreter_api
from pasta_jax.interpreter import results as results_lib

EXPANDED = 'expanded'
NO_SKELETON = 'no_skeleton'            # no list of 2 or more items in the skeleton
# The prompt + skeleton, or the forced prefix, is longer than the interpreter takes.
CONTEXT_TOO_LONG = 'context_too_long'
OUTCOMES = (EXPANDED, NO_SKELETON, CONTEXT_TOO_LONG)


@dataclasses.dataclass(frozen=True)
class SotConfig:
  """How the skeleton is asked for and expanded.

  Attributes:
    skeleton_suffix: text after the rendered prompt that asks for the skeleton.
      '' (the default, for the synthetic benchmark, whose models follow no
      instruction): the model's own answer is read for its list.
    max_skeleton_tokens: the skeleton's decode budget in rounds (None: the
      run's max_steps).
    point_tokens: the promised length of every point (a multiple of the
      tokenizer's quantum, at most its largest length token).
  """

  skeleton_suffix: str = ''
  max_skeleton_tokens: int | None = None
  point_tokens: int = 30


@dataclasses.dataclass(frozen=True)
class Skeleton:
  """What the skeleton phase wrote and the points read from it.

  Attributes:
    text: the skeleton phase's answer.
    intro: the skeleton's text before its list (the main thread writes it).
    points: the topics of the list's items, in order.
    dropped: items past the interpreter's max_threads (not expanded).
  """

  text: str
  intro: str
  points: tuple[str, ...]
  dropped: int = 0


def parse_skeleton(text: str, max_points: int) -> Skeleton | None:
  """The first list of `text` as a skeleton (None when it has no list of 2 or
  more items); items past `max_points` are dropped and counted."""
  nodes = rules.annotate(text).nodes
  first = next((i for i, n in enumerate(nodes) if isinstance(n, lang.Promise)), None)
  if first is None:
    return None
  points = []
  for node in nodes[first:]:
    if isinstance(node, lang.Promise):
      points.append(node.topic)
    elif not (isinstance(node, lang.Text) and not node.text.strip()):
      break  # the list ended (a sync, or text after it)
  intro = ''.join(n.text for n in nodes[:first])
  return Skeleton(text, intro, tuple(points[:max_points]), max(0, len(points) - max_points))


class SkeletonOfThought:
  """Skeleton-of-Thought decoding of one run (see the module docstring)."""

  def __init__(self, run: Any, config: SotConfig = SotConfig(), **overrides: Any):
    """Args:
      run: a `runs.Run` (PASTA or sequential).
      config: the skeleton and expansion settings.
      overrides: InterpreterConfig fields for both phases (slots, max_threads
        and round_widths apply to the expansion only).
    """
    tok = run.tokenizer
    quantum, most = tok.quantum, tok.max_promise_tokens
    if config.point_tokens % quantum or not 0 <= config.point_tokens <= most:
      raise ValueError(f'point_tokens={config.point_tokens}: expected a multiple of '
                       f'{quantum} in [0, {most}]')
    self.run = run
    self.config = config
    self.tokenizer = tok
    self.template = run.prompt_template
    sequential = {k: v for k, v in overrides.items()
                  if k not in ('slots', 'max_threads', 'round_widths')}
    self.skeleton_decoder = Interpreter.from_run(run, **{**sequential, 'mode': 'sequential'})
    self.plain_decoder = self.skeleton_decoder
    if config.max_skeleton_tokens is not None:
      self.skeleton_decoder = Interpreter.from_run(
          run, **{**sequential, 'mode': 'sequential',
                  'max_steps': config.max_skeleton_tokens})
    self.expander = Interpreter.from_run(run, **{**overrides, 'mode': 'pasta'})
    self._suffix = np.asarray(tok.encode_text(config.skeleton_suffix), np.int32)
    # No promises of the model's own after the forced ones (forced tokens are not
    # biased).
    self._no_promise = {tok.control.promise: -1e9}
    self._warmed: set[tuple[int, int, int]] = set()
    # Prompt ids -> (outcome, skeleton): a prompt decoded twice (a warm-up) counts once.
    self.records: dict[tuple[int, ...], tuple[str, Skeleton | None]] = {}

  # The interface `comparison.evaluate_many` decodes through.

  @property
  def max_prompt_tokens(self) -> int:
    return self.skeleton_decoder.max_prompt_tokens

  def bucket(self, length: int) -> int:
    return self.skeleton_decoder.bucket(length)

  @property
  def outcomes(self) -> collections.Counter:
    """Prompts by outcome (EXPANDED, NO_SKELETON, CONTEXT_TOO_LONG)."""
    return collections.Counter(outcome for outcome, _ in self.records.values())

  def _timed(self, interp: Interpreter, ids: np.ndarray, prefix: np.ndarray | None = None,
             logit_bias: dict[int, float] | None = None
             ) -> tuple[results_lib.Result, results_lib.Timing]:
    """`interp.generate_timed`, compiled outside the timing (once per prompt
    bucket and prefix width)."""
    if len(ids) <= interp.max_prompt_tokens:
      width = 0 if prefix is None else interp.prefix_forcing([prefix]).shape[-1]
      key = (id(interp), interp.bucket(len(ids)), width)
      if key not in self._warmed:
        interp.generate_timed(ids, prefix=prefix, logit_bias=logit_bias)
        self._warmed.add(key)
    return interp.generate_timed(ids, prefix=prefix, logit_bias=logit_bias)

  def forced_prefix(self, skeleton: Skeleton) -> np.ndarray:
    """The expansion's forced main-thread tokens: the intro, a promise per point
    (its topic cut to the interpreter's max_topic_tokens), `<sync/>`."""
    tok, most = self.tokenizer, self.expander.config.max_topic_tokens
    ids = list(tok.encode_text(skeleton.intro))
    for point in skeleton.points:
      promise, *topic, length = tok.encode(lang.Document((lang.Promise(
          point, self.config.point_tokens),)), add_eos=False, annotated=False)
      ids += [promise, *topic[:most], length]
    return np.asarray(ids + [tok.control.sync], np.int32)

  def generate_timed(self, prompt_ids: np.ndarray
                     ) -> tuple[results_lib.Result, results_lib.Timing]:
    """Both phases for one prompt (rendered with the run's template), batch 1,
    greedy: the expansion's result (or the plain answer's) with the steps,
    tokens and seconds of the skeleton added."""
    prompt_ids = np.asarray(prompt_ids, np.int32)
    if len(prompt_ids) > self.max_prompt_tokens:
      return self.skeleton_decoder.generate_timed(prompt_ids)  # prompt_too_long
    context = np.concatenate([prompt_ids, self._suffix])
    skeleton_result, skeleton_time = self._timed(self.skeleton_decoder, context)
    skeleton = parse_skeleton(skeleton_result.text, self.expander.config.max_threads)
    outcome = EXPANDED if skeleton is not None else NO_SKELETON
    if skeleton is not None:
      written = [t for t in skeleton_result.threads[0].tokens if t != self.tokenizer.eos_id]
      context = np.concatenate([context, np.asarray(written, np.int32)])
      prefix = self.forced_prefix(skeleton)
      if (len(context) > self.expander.max_prompt_tokens
          or len(prefix) > interpreter_api.PREFIX_BUCKETS[-1]):
        outcome = CONTEXT_TOO_LONG
    self.records[tuple(prompt_ids.tolist())] = (outcome, skeleton)
    if outcome != EXPANDED and self.skeleton_decoder is self.plain_decoder and not len(
        self._suffix):
      # The skeleton phase decoded the prompt alone, as the plain answer would:
      # its answer is the plain answer, paid for once.
      return (dataclasses.replace(skeleton_result, prompt_tokens=len(prompt_ids)),
              skeleton_time)
    if outcome == EXPANDED:
      result, timing = self._timed(self.expander, context, prefix, self._no_promise)
    else:
      result, timing = self._timed(self.plain_decoder, prompt_ids)
    result = dataclasses.replace(
        result, steps=skeleton_result.steps + result.steps,
        total_tokens=skeleton_result.total_tokens + result.total_tokens,
        prompt_tokens=len(prompt_ids))
    return result, results_lib.Timing(
        prefill_seconds=skeleton_time.prefill_seconds + timing.prefill_seconds,
        decode_seconds=skeleton_time.decode_seconds + timing.decode_seconds)

  def report(self) -> dict[str, Any]:
    """Counts by outcome and, per prompt decoded, its outcome and skeleton."""
    return {
        'outcomes': {o: self.outcomes[o] for o in OUTCOMES},
        'points_dropped': sum(s.dropped for _, s in self.records.values() if s),
        'prompts': [{'outcome': outcome,
                     'skeleton': None if s is None else s.text,
                     'points': None if s is None else list(s.points)}
                    for outcome, s in self.records.values()],
    }

  def summary_line(self) -> str:
    counts = self.outcomes
    total = sum(counts.values())
    return (f'skeleton-of-thought: {counts[EXPANDED]} of {total} prompts expanded from a '
            f'skeleton, {counts[NO_SKELETON]} had no list in their skeleton and '
            f'{counts[CONTEXT_TOO_LONG]} too long a skeleton context (both answered plainly)')
