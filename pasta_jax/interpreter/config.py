"""Static settings of the interpreter (one compilation per distinct value)."""

from __future__ import annotations

import dataclasses

from pasta_jax.settings import Mode, PositionStrategy


@dataclasses.dataclass(frozen=True)
class InterpreterConfig:
  """Shapes, budgets and grammar limits of the on-device PASTA interpreter.

  Attributes:
    mode: Mode.PASTA, or Mode.SEQUENTIAL for the sequential baseline decoder
      (no PASTA tags at all; requires slots == 1). A string is parsed.
    slots: S thread slots per request; slot 0 is the main thread, so at most
      S - 1 async threads run at once (later promises queue). S = 1 in
      sequential mode.
    max_threads: the most promises one request may make (the grammar stops
      offering `<promise>` after that).
    cache_size: KV-cache entries per request (prompt + everything decoded).
    max_steps: decode rounds per request, the prefill round included (the
      token budget). A request still running then is reported as 'budget'.
    max_topic_tokens: a promise topic longer than this is closed (only length
      tokens are offered).
    max_thread_tokens: an async body longer than this is closed with
      `</async>` (None: only the budget limits it).
    position_strategy: the positions a promise reserves (a kind alone is
      parsed; 'predicted' or 'fixed': 'oracle' needs the body's length before the body exists, so a
      run trained with it decodes with `PositionStrategy.for_decoding()`).
    top_k: sample among the k most likely tokens (0: all).
    use_top_p: apply the per-request nucleus threshold `top_p`.
    record_logits: keep the logits of every sampled token (debugging and the
      replay test; memory B x cache_size x V).
    hoist_layouts: give the decode loop transposed copies of the weights it
      multiplies by their transpose (embedding table, q/kv projections, MLP
      gating; see `layouts.permutations`). `Interpreter` makes them once and
      keeps them between generations (`Interpreter.hoisted_params`). Faster
      on CPU; costs the memory of those weights once more. None: on when the
      default backend is the CPU.
    cache_stages: cache sizes the decode loop grows through before
      `cache_size`, e.g. (128, 256). Decode attention reads every entry of the
      cache it is given, written or not; with stages a generation starts on the
      smallest stage that holds its prompt and moves to the next (padding the
      cache, once) when a round might not fit, so short answers attend over
      short caches. Each stage compiles its own decode loop (compile time grows
      with their number). (): the whole cache from the first round.
    round_widths: the query widths a PASTA round is compiled for, increasing,
      the last one `slots`. A round runs the narrowest that holds its fed
      slots (a `lax.switch` over one compiled model call per width), so a
      round that feeds one thread costs about what a one-slot decoder pays.
      (S,) alone: every round runs all slots, with no conditional. None: on
      the CPU the powers of two below S, and S (a round's cost grows with its
      width there); on accelerators (S,) (a small round's cost hardly depends
      on its width, and the conditional costs every round a wait for its
      branch index; docs/benchmarks.md has the measurements).
    rounds_per_check: decode rounds each iteration of the decode loop runs
      before the loop tests whether to go on (`Engine.decode`). On a GPU each
      test copies the loop condition to the host and waits for it, so the
      launches of the next round wait too. A round run after the test would
      have stopped the loop (every request stopped, the budget spent, or, in a
      cache stage, a round that might not fit) changes nothing, so the results
      are exactly those of one round per test; the price is up to
      rounds_per_check - 1 idle rounds of compute when a loop ends. None: 4 on
      GPUs, 1 on the CPU and TPUs (they test the condition without a host
      round trip).
  """

  mode: Mode = Mode.PASTA
  slots: int = 8
  max_threads: int = 16
  cache_size: int = 1024
  max_steps: int = 512
  max_topic_tokens: int = 16
  max_thread_tokens: int | None = None
  position_strategy: PositionStrategy = PositionStrategy()
  top_k: int = 0
  use_top_p: bool = False
  record_logits: bool = False
  hoist_layouts: bool | None = None
  cache_stages: tuple[int, ...] = ()
  round_widths: tuple[int, ...] | None = None
  rounds_per_check: int | None = None

  def __post_init__(self) -> None:
    object.__setattr__(self, 'mode', Mode.parse(self.mode))
    object.__setattr__(self, 'position_strategy',
                       PositionStrategy.parse(self.position_strategy))
    if self.slots < 1:
      raise ValueError(f'slots must be >= 1, got {self.slots}')
    if self.sequential and self.slots != 1:
      raise ValueError(f'sequential decoding uses one slot, got slots={self.slots}')
    if not self.sequential and self.slots < 2:
      raise ValueError('PASTA decoding needs at least 2 slots (main + one async); '
                       "use mode='sequential' for a single slot")
    if self.max_threads < 1:
      raise ValueError(f'max_threads must be >= 1, got {self.max_threads}')
    if self.max_steps < 1 or self.cache_size < 2:
      raise ValueError(f'need max_steps >= 1 and cache_size >= 2, got '
                       f'{self.max_steps}, {self.cache_size}')
    if self.max_topic_tokens < 0:
      raise ValueError(f'max_topic_tokens must be >= 0, got {self.max_topic_tokens}')
    if self.max_thread_tokens is not None and self.max_thread_tokens < 0:
      raise ValueError(f'max_thread_tokens must be >= 0, got {self.max_thread_tokens}')
    if not self.position_strategy.decodable:
      raise ValueError("position strategy 'oracle' needs each body's length before it "
                       "is decoded; the interpreter supports 'predicted' and 'fixed' "
                       '(PositionStrategy.for_decoding() gives the one to decode with)')
    if self.top_k < 0:
      raise ValueError(f'top_k must be >= 0, got {self.top_k}')
    stages = self._increasing_ints('cache_stages')
    if stages and (stages[0] <= self.slots or stages[-1] >= self.cache_size):
      raise ValueError(
          f'cache_stages {stages}: every stage must hold more than one round '
          f'(> slots = {self.slots}) and be smaller than cache_size = {self.cache_size}')
    if self.round_widths is not None:
      widths = self._increasing_ints('round_widths')
      if not widths or widths[0] < 1 or widths[-1] != self.slots:
        raise ValueError(f'round_widths {widths}: expected strictly increasing widths '
                         f'>= 1 that end with slots = {self.slots}')
    if self.rounds_per_check is not None and (
        not isinstance(self.rounds_per_check, int) or isinstance(self.rounds_per_check, bool)
        or self.rounds_per_check < 1):
      raise ValueError(f'rounds_per_check must be an integer >= 1, got {self.rounds_per_check!r}')

  def _increasing_ints(self, name: str) -> tuple[int, ...]:
    """Field `name` as a tuple (a list from a config file is fine too), checked
    to be strictly increasing integers."""
    values = tuple(getattr(self, name))
    object.__setattr__(self, name, values)
    if any(not isinstance(v, int) or isinstance(v, bool) for v in values):
      raise ValueError(f'{name} must be integers, got {values}')
    if list(values) != sorted(set(values)):
      raise ValueError(f'{name} must be strictly increasing, got {values}')
    return values

  def for_backend(self, backend: str) -> 'InterpreterConfig':
    """This config with the settings left to the backend (`hoist_layouts`,
    `round_widths` and `rounds_per_check` None) resolved for `backend` ('cpu', 'tpu', 'gpu'): what the
    programs compiled for that backend run. The interpreter resolves them for
    `jax.default_backend()`; a program compiled ahead of time for another
    backend (`pasta_jax.pod`) resolves them for its target."""
    hoist = backend == 'cpu' if self.hoist_layouts is None else self.hoist_layouts
    widths = self.round_widths
    if widths is None:
      s = self.slots
      widths = ((s,) if backend != 'cpu' else
                tuple(sorted({1 << i for i in range(s.bit_length()) if 1 << i < s} | {s})))
    rounds = self.rounds_per_check
    if rounds is None:
      rounds = 4 if backend in ('gpu', 'cuda', 'rocm') else 1
    return dataclasses.replace(self, hoist_layouts=hoist, round_widths=widths,
                               rounds_per_check=rounds)

  @property
  def sequential(self) -> bool:
    """Whether this is the sequential baseline decoder (`mode`)."""
    return self.mode is Mode.SEQUENTIAL

  @property
  def stages(self) -> tuple[int, ...]:
    """Cache sizes of the decode loop's stages, the last one `cache_size`."""
    return self.cache_stages + (self.cache_size,)

  @property
  def log_size(self) -> int:
    """Room for every token a request can sample: each sampled token is fed
    (one cache entry) except the last EOS and the tokens pending at a stop."""
    return self.cache_size + self.slots + 1
