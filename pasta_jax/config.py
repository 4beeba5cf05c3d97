"""The run config: defaults, validation, and the frozen model config.

An experiment file (`configs/*.py`) builds an `ml_collections.ConfigDict`;
`resolve(config)` fills every field it leaves out from `defaults()`, rejects keys
that `defaults()` does not know (naming the key and the keys expected there) and
values that cannot work, and returns the effective config, which training saves
beside its checkpoints. Sections:

  seed          seeds the model init and the data order.
  data          the dataset and the input pipeline (`pasta_jax.data`).
  tokenizer     path '' trains one on the training split (vocab_size, num_texts);
                else a sentencepiece model wrapped by `Tokenizer.from_pretrained`.
  interpreter   every `InterpreterConfig` field but `mode` and `position_strategy`
                (those come from `data`), with its default; `interpreter_config(c)`
                builds the decoder's config from it.
  model         every `models.TransformerConfig` field (`model_fields(preset)`);
                vocab_size 0 means the tokenizer's.
  init          params from a Gemma checkpoint instead of random ones; `run`, the
                stage-1 run that stage 2 starts from.
  optimizer     AdamW, warmup + decay schedule, clipping, accumulation.
  train         length of the run, how often it logs, what a non-finite step does.
  eval          periodic validation loss.
  checkpoint    orbax CheckpointManager settings.
  mesh          device mesh ('data', 'fsdp', 'tensor') and logical axis rules
                (`rules_for`).
  po            (stage 2 only; `po_fields()`) preference-optimisation rounds
                (`pasta_jax.preference.rounds`): a config with this section is a
                stage-2 run, started from the stage-1 run `init.run`.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from typing import Any, Mapping, Sequence

import jax
import ml_collections

from pasta_jax import errors
from pasta_jax.interpreter.config import InterpreterConfig
from pasta_jax.models import config as model_config_lib
from pasta_jax.models import sharding as model_sharding
from pasta_jax.settings import Mode, PositionStrategy

ConfigDict = ml_collections.ConfigDict

SCHEDULES = ('linear', 'cosine', 'constant')
INIT_FORMATS = ('converted', 'orbax')
NONFINITE_POLICIES = ('stop', 'skip')
QUALITIES = ('exact', 'judge')  # po.quality
# InterpreterConfig fields that the data section sets (data.mode,
# data.position_strategy, data.fixed_reserve), absent from the interpreter section.
_FROM_DATA = ('mode', 'position_strategy')
# data keys that only one dataset uses (absent from the defaults of the other).
_JSONL_KEYS = ('jsonl_name', 'jsonl_paths', 'on_error')


class ConfigError(errors.UserError, ValueError):
  """A config that cannot run; the message names the key, the value and what is expected."""


def model_fields(preset: str, **overrides: Any) -> ConfigDict:
  """Every TransformerConfig field of a model preset, as a config section.

  `vocab_size=0` (allowed only here) stands for the tokenizer's vocabulary size.
  """
  vocab = overrides.pop('vocab_size', None)
  fields = model_config_lib.get_config(preset, **overrides).to_dict()
  fields['attention_pattern'] = tuple(fields['attention_pattern'])
  if vocab is not None:
    fields['vocab_size'] = vocab
  return ConfigDict(fields)


def interpreter_fields() -> ConfigDict:
  """Every InterpreterConfig field of the interpreter section, with its default.

  A None default is a typed placeholder, so that the command line can set it
  (`--config.interpreter.max_thread_tokens=200`).
  """
  hints = typing.get_type_hints(InterpreterConfig)
  placeholder = ml_collections.config_dict.placeholder
  return ConfigDict({
      f.name: placeholder(_optional_type(hints[f.name])) if f.default is None else f.default
      for f in dataclasses.fields(InterpreterConfig) if f.name not in _FROM_DATA})


def _optional_type(hint: Any) -> type:
  """int for `int | None`, tuple for `tuple[int, ...] | None`."""
  (arg,) = (a for a in typing.get_args(hint) if a is not type(None))
  return typing.get_origin(arg) or arg


def defaults() -> ConfigDict:
  """Every training field with its default value."""
  c = ConfigDict()
  c.seed = 0

  c.data = ConfigDict()
  c.data.name = 'pasta_synth'          # 'pasta_synth' or 'pasta_jsonl'
  c.data.tfds_config = 'default'       # pasta_synth builder config
  c.data.data_dir = ''                 # '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
  c.data.mode = 'pasta'                # 'pasta' or 'sequential'
  c.data.seq_len = 320
  c.data.batch_size = 16               # global rows; each host reads batch_size / hosts
  c.data.promise_lengths = 'measured'
  c.data.quantum = 10
  c.data.max_promise_tokens = 100
  c.data.prompt_template = '{prompt}\n'
  c.data.position_strategy = 'predicted'
  c.data.fixed_reserve = 32
  c.data.prefetch = 2                  # batches prepared ahead in grain's background thread
  c.data.workers = 0                   # grain worker processes laying out examples
                                       # (0: the training process; same batches for any)
  c.data.max_too_long = 0.01           # refuse to train when a larger fraction of a split's
                                       # examples is longer than seq_len (they are skipped)
  c.data.length_check = 20000          # examples per host and split whose lengths are
                                       # checked at start-up (a random sample of bigger
                                       # splits; 0 = no check)

  c.tokenizer = ConfigDict()
  c.tokenizer.path = ''                # '' = train one on the training split
  c.tokenizer.vocab_size = 512
  c.tokenizer.num_texts = 5000

  c.interpreter = interpreter_fields()

  c.model = model_fields('tiny', vocab_size=0)

  c.init = ConfigDict()
  c.init.checkpoint = ''               # '' = random init
  c.init.format = 'converted'          # scripts/convert_hf_checkpoint.py output, or 'orbax'
  c.init.trim_vocab = False            # official Gemma 1/2 tables have padding rows
  c.init.run = ''                      # stage 2: the stage-1 run directory it starts from

  c.optimizer = ConfigDict()
  c.optimizer.lr = 1e-3                # peak learning rate
  c.optimizer.schedule = 'cosine'      # decay after warmup: linear, cosine or constant
  c.optimizer.warmup_steps = 100
  c.optimizer.end_lr_factor = 0.0      # final lr = lr * end_lr_factor
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.98
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.0       # decoupled; matrices only, not norm scales
  c.optimizer.grad_clip_norm = 1.0     # 0 = no clipping
  c.optimizer.grad_accum_steps = 1     # micro-batches per update

  c.train = ConfigDict()
  c.train.num_steps = 1000             # 0 = derive from num_epochs
  c.train.num_epochs = 0.0             # used when num_steps == 0
  c.train.log_every = 20
  c.train.on_nonfinite = 'stop'        # a non-finite loss, gradient norm or update:
                                       # 'stop' (TrainingDiverged) or 'skip' the update
  c.train.max_skipped_steps = 10       # 'skip': stop once more steps than this were skipped

  c.eval = ConfigDict()
  c.eval.every_steps = 250             # 0 = only at the end
  c.eval.split = 'validation'
  c.eval.num_batches = 0               # 0 = the whole split
  c.eval.batch_size = 0                # global rows; 0 = data.batch_size

  c.checkpoint = ConfigDict()
  c.checkpoint.every_steps = 500
  c.checkpoint.keep = 2
  c.checkpoint.async_save = True

  c.mesh = ConfigDict()
  c.mesh.shape = (-1, 1, 1)            # (data, fsdp, tensor); one -1 = the remaining devices
  c.mesh.rules = ()                    # (logical, mesh axes) pairs replacing the default rules
  return c


def po_fields() -> ConfigDict:
  """The `po` section of a stage-2 config (docs/design.md section 7), with defaults."""
  po = ConfigDict()
  po.lam = 4.0                 # score = speedup + lam * quality; float('inf') or 'inf':
                               # quality first, speed breaks ties
  po.rounds = 2                # rounds, each from the previous round's model
  po.split = 'preference'      # the dataset split whose prompts are sampled
  po.num_prompts = 0           # the split's first prompts; 0 = all of them
  po.num_samples = 10          # N samples per prompt
  po.temperature = 1.0
  po.top_p = 1.0
  po.sample_batch_size = 32    # interpreter requests per call
  po.chunk_prompts = 64        # prompts per stored (resumable) chunk of samples
  po.alpha = 0.1               # BoNBoN: weight of -logp(y+) (untuned default)
  po.beta = 0.5                # BoNBoN: the IPO term pulls h towards 1 / (2 beta)
  po.batch_size = 8            # rows of a pair batch
  po.seq_len = 0               # length of a pair batch row; 0 = 2 * data.seq_len
  po.pairs_per_row = 1         # pairs packed into one row at most
  po.train_steps = 0           # updates per round; 0 = derive from epochs
  po.epochs = 1.0              # passes over the round's pairs when train_steps is 0
  po.lr = 1e-5                 # peak learning rate (other AdamW settings: optimizer.*)
  po.schedule = 'linear'       # linear, cosine or constant, after warmup
  po.warmup_steps = 0
  po.end_lr_factor = 0.0
  po.log_every = 10
  po.checkpoint_every = 100    # checkpoints within a round (and one at its end)
  po.quality = 'exact'         # 'exact': the synthetic checkers; 'judge': an LLM judge's
                               # preference over the sequential model's answer (po.judge)
  po.sequential_run = ''       # a sequential run: its greedy answers are the speedup
                               # baseline (and the judge's); '' = each sample's own length
  po.judge = judge_fields()
  return po


def judge_fields() -> ConfigDict:
  """The `po.judge` section: the LLM judge of stage 2 (`po.quality = 'judge'`,
  docs/judge.md). The API key is read from the environment variable it names,
  never stored in the config."""
  judge = ConfigDict()
  judge.model = ''             # the judge model (required with po.quality = 'judge')
  judge.base_url = ''          # '' = $OPENAI_BASE_URL
  judge.api_key_env = 'OPENAI_API_KEY'  # the variable that holds the key
  judge.cache = ''             # '' = WORKDIR/judge_cache.jsonl
  judge.concurrency = 8
  judge.timeout = 120.0
  judge.max_retries = 6
  judge.initial_backoff = 1.0
  judge.max_backoff = 60.0
  judge.max_tokens = 16
  judge.top_logprobs = 5       # 0: ask for no log-probabilities (verdicts count alone)
  judge.fix_attempts = 1
  return judge


def _unknown(path: str, key: str, known) -> ConfigError:
  near = difflib.get_close_matches(key, list(known), n=1)
  hint = f'; did you mean {near[0]!r}?' if near else ''
  where = f'config.{path.rstrip(".")}' if path else 'the config'
  return ConfigError(f'unknown config key config.{path}{key}{hint} (the keys of {where} '
                     f'are {sorted(known)})')


def _merge(reference: ConfigDict, given: Mapping[str, Any], path: str,
           extra: tuple[str, ...] = ()) -> ConfigDict:
  out = ConfigDict()
  for key in given:
    if key not in reference and key not in extra:
      raise _unknown(path, key, tuple(reference) + extra)
  for key in tuple(reference) + tuple(k for k in extra if k in given):
    ref = reference.get(key)
    if key not in given:
      out[key] = ref
    elif isinstance(ref, ConfigDict):
      if not isinstance(given[key], (ConfigDict, Mapping)):
        raise ConfigError(f'config key {path}{key} must be a section, got '
                          f'{given[key]!r}')
      out[key] = _merge(ref, given[key], f'{path}{key}.',
                        _JSONL_KEYS if f'{path}{key}' == 'data' else ())
    else:
      out[key] = _typed(f'{path}{key}', ref, given[key])
  return out


def _typed(key: str, ref: Any, value: Any) -> Any:
  """`value` if it has the type of the default `ref` (an int may stand for a float)."""
  # Model fields are checked by TransformerConfig (their types vary by preset); a
  # None default (an optional interpreter field) by InterpreterConfig.
  if ref is None or key.startswith('model.'):
    return value
  if isinstance(ref, bool) or isinstance(value, bool):
    ok = isinstance(ref, bool) and isinstance(value, bool)
  elif isinstance(ref, float):
    ok = isinstance(value, (int, float))
    value = float(value) if ok else value
  elif isinstance(ref, (tuple, list)):
    ok = isinstance(value, (tuple, list))
  else:
    ok = isinstance(value, type(ref))
  if not ok:
    raise ConfigError(f'config.{key}={value!r}: expected a {type(ref).__name__} like the '
                      f'default {ref!r}')
  return value


def resolve(config: Mapping[str, Any]) -> ConfigDict:
  """The effective config: defaults filled in, keys and values checked.

  Raises:
    ConfigError: an unknown key or an impossible value (named in the message).
  """
  given = config.to_dict() if isinstance(config, ConfigDict) else dict(config)
  if 'model' in given and isinstance(given['model'], (Mapping, ConfigDict)):
    # The model section is complete by construction (model_fields); check it as such.
    fields = {f.name for f in dataclasses.fields(model_config_lib.TransformerConfig)}
    for key in given['model']:
      if key not in fields:
        raise _unknown('model.', key, fields)
    missing = sorted(fields - set(given['model']))
    if missing:
      raise ConfigError(f'config.model lacks the fields {missing}: build the section with '
                        'pasta_jax.config.model_fields(preset, **overrides)')
  po = given.pop('po', None)
  out = _merge(defaults(), given, '')
  if po is not None:
    if not isinstance(po, (ConfigDict, Mapping)):
      raise ConfigError(f'config key po must be a section, got {po!r}')
    po = dict(po)
    if isinstance(po.get('lam'), str):
      po['lam'] = _lam(po['lam'])
    out.po = _merge(po_fields(), po, 'po.')
  check_values(out)
  return out


def _lam(value: str) -> float:
  """po.lam given as text ('inf', '2')."""
  try:
    return float(value)
  except ValueError:
    raise ConfigError(f'config.po.lam={value!r}: expected a number >= 0 or \'inf\'') from None


def check_values(c: ConfigDict) -> None:
  """Value checks that need no devices, data or files."""
  def need(ok: bool, key: str, expected: str):
    if not ok:
      raise ConfigError(f'config.{key}={_value(c, key)!r}: expected {expected}')

  need(c.data.name in ('pasta_synth', 'pasta_jsonl'), 'data.name',
       "'pasta_synth' or 'pasta_jsonl'")
  if c.data.name == 'pasta_jsonl':
    for key in ('jsonl_name', 'jsonl_paths'):
      need(bool(c.data.get(key)), f'data.{key}',
           'a value for the pasta_jsonl dataset (see configs/gemma_sft.py)')
    need(re.fullmatch(r'[A-Za-z0-9_.-]+', c.data.jsonl_name) is not None, 'data.jsonl_name',
         'letters, digits, "_", "." and "-" (it names a directory)')
  need(c.data.mode in [m.value for m in Mode], 'data.mode', "'pasta' or 'sequential'")
  need(c.data.position_strategy in PositionStrategy.KINDS, 'data.position_strategy',
       f'one of {list(PositionStrategy.KINDS)}')
  need(c.data.fixed_reserve >= 0, 'data.fixed_reserve', 'an int >= 0')
  need(c.data.seq_len >= 2, 'data.seq_len', 'an int >= 2')
  need(c.data.batch_size >= 1, 'data.batch_size', 'an int >= 1')
  need(c.data.prefetch >= 0, 'data.prefetch', 'an int >= 0')
  need(c.data.workers >= 0, 'data.workers', 'an int >= 0')
  need(0 <= c.data.max_too_long <= 1, 'data.max_too_long', 'a fraction in [0, 1]')
  need(c.data.length_check >= 0, 'data.length_check', 'an int >= 0 (0 = no check)')
  need(c.tokenizer.path != '' or c.tokenizer.num_texts >= 1, 'tokenizer.num_texts',
       'an int >= 1 (texts to train the tokenizer on)')
  need(c.model.vocab_size >= 0, 'model.vocab_size', "an int >= 0 (0 = the tokenizer's)")
  need(c.init.format in INIT_FORMATS, 'init.format', f'one of {INIT_FORMATS}')
  opt = c.optimizer
  need(opt.lr > 0, 'optimizer.lr', 'a float > 0')
  need(opt.schedule in SCHEDULES, 'optimizer.schedule', f'one of {SCHEDULES}')
  need(opt.warmup_steps >= 0, 'optimizer.warmup_steps', 'an int >= 0')
  need(0 <= opt.end_lr_factor <= 1, 'optimizer.end_lr_factor', 'a float in [0, 1]')
  need(0 <= opt.b1 < 1, 'optimizer.b1', 'a float in [0, 1)')
  need(0 <= opt.b2 < 1, 'optimizer.b2', 'a float in [0, 1)')
  need(opt.eps > 0, 'optimizer.eps', 'a float > 0')
  need(opt.weight_decay >= 0, 'optimizer.weight_decay', 'a float >= 0')
  need(opt.grad_clip_norm >= 0, 'optimizer.grad_clip_norm', 'a float >= 0 (0 = off)')
  need(opt.grad_accum_steps >= 1, 'optimizer.grad_accum_steps', 'an int >= 1')
  need(c.train.num_steps >= 0, 'train.num_steps', 'an int >= 0')
  need(c.train.num_steps > 0 or c.train.num_epochs > 0, 'train.num_epochs',
       'a number > 0 when train.num_steps is 0')
  need(c.train.log_every >= 1, 'train.log_every', 'an int >= 1')
  need(c.train.on_nonfinite in NONFINITE_POLICIES, 'train.on_nonfinite',
       f'one of {NONFINITE_POLICIES}')
  need(c.train.max_skipped_steps >= 0, 'train.max_skipped_steps', 'an int >= 0')
  need(c.eval.every_steps >= 0, 'eval.every_steps', 'an int >= 0 (0 = only at the end)')
  need(c.eval.num_batches >= 0, 'eval.num_batches', 'an int >= 0 (0 = the whole split)')
  need(c.eval.batch_size >= 0, 'eval.batch_size', 'an int >= 0 (0 = data.batch_size)')
  need(c.checkpoint.every_steps >= 1, 'checkpoint.every_steps', 'an int >= 1')
  need(c.checkpoint.keep >= 1, 'checkpoint.keep', 'an int >= 1')
  shape = tuple(c.mesh.shape)
  need(len(shape) == 3 and all(isinstance(n, int) and (n >= 1 or n == -1) for n in shape)
       and shape.count(-1) <= 1, 'mesh.shape',
       '(data, fsdp, tensor): three ints >= 1, at most one of them -1')
  for rule in c.mesh.rules:
    need(isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str),
         'mesh.rules', "pairs (logical name, mesh axis or axes or None), e.g. "
         "(('batch', ('data', 'fsdp')), ('embed', 'fsdp'))")
  if 'po' in c:
    _check_po(c, need)
  else:
    need(not c.init.run, 'init.run', "'' outside stage 2 (a stage-2 config has a po "
         'section, e.g. configs/synth_po.py)')
  try:
    interpreter_config(c)
  except ConfigError:
    raise
  except (TypeError, ValueError) as e:
    raise ConfigError(f'{_interpreter_key(c, str(e))}: {e}') from None


def _check_po(c: ConfigDict, need) -> None:
  """Value checks of a stage-2 config (`po` section, `init.run`)."""
  po = c.po
  need(bool(c.init.run), 'init.run', 'the stage-1 run directory stage 2 starts from '
       '(--config.init.run=workdir/synth_pasta)')
  need(po.quality in QUALITIES, 'po.quality', f'one of {QUALITIES}')
  need(c.data.name == 'pasta_synth' or po.quality == 'judge', 'data.name',
       "'pasta_synth' in stage 2 with po.quality = 'exact' (its exact checker scores the "
       "samples' quality); po.quality = 'judge' scores any data set")
  if po.quality == 'judge':
    judge = po.judge
    need(bool(judge.model), 'po.judge.model', "the judge's model name with po.quality = 'judge'")
    need(bool(po.sequential_run), 'po.sequential_run',
         "the sequential run whose answers the judge compares with (po.quality = 'judge')")
    need(judge.concurrency >= 1, 'po.judge.concurrency', 'an int >= 1')
    need(judge.timeout > 0, 'po.judge.timeout', 'a number of seconds > 0')
    for key in ('max_retries', 'top_logprobs', 'fix_attempts'):
      need(judge[key] >= 0, f'po.judge.{key}', 'an int >= 0')
    for key in ('initial_backoff', 'max_backoff'):
      need(judge[key] >= 0, f'po.judge.{key}', 'a number >= 0')
    need(judge.max_tokens >= 1, 'po.judge.max_tokens', 'an int >= 1')
  need(po.lam >= 0, 'po.lam', "a number >= 0 or 'inf'")  # NaN fails too
  need(po.rounds >= 1, 'po.rounds', 'an int >= 1')
  need(bool(po.split), 'po.split', "a split of the dataset (e.g. 'preference')")
  need(po.num_prompts >= 0, 'po.num_prompts', 'an int >= 0 (0 = the whole split)')
  need(po.num_samples >= 2, 'po.num_samples', 'an int >= 2 (a pair needs two samples)')
  need(po.temperature > 0, 'po.temperature', 'a float > 0')
  need(0 < po.top_p <= 1, 'po.top_p', 'a float in (0, 1]')
  need(po.sample_batch_size >= 1, 'po.sample_batch_size', 'an int >= 1')
  need(po.chunk_prompts >= 1, 'po.chunk_prompts', 'an int >= 1')
  need(0 <= po.alpha <= 1, 'po.alpha', 'a float in [0, 1]')
  need(po.beta > 0, 'po.beta', 'a float > 0')
  need(po.batch_size >= 1, 'po.batch_size', 'an int >= 1')
  need(po.seq_len == 0 or po.seq_len >= 2, 'po.seq_len', 'an int >= 2 (0 = 2 * data.seq_len)')
  need(po.pairs_per_row >= 1, 'po.pairs_per_row', 'an int >= 1')
  need(po.train_steps >= 0, 'po.train_steps', 'an int >= 0 (0 = derive from po.epochs)')
  need(po.train_steps > 0 or po.epochs > 0, 'po.epochs',
       'a number > 0 when po.train_steps is 0')
  need(po.lr > 0, 'po.lr', 'a float > 0')
  need(po.schedule in SCHEDULES, 'po.schedule', f'one of {SCHEDULES}')
  need(po.warmup_steps >= 0, 'po.warmup_steps', 'an int >= 0')
  need(0 <= po.end_lr_factor <= 1, 'po.end_lr_factor', 'a float in [0, 1]')
  need(po.log_every >= 1, 'po.log_every', 'an int >= 1')
  need(po.checkpoint_every >= 1, 'po.checkpoint_every', 'an int >= 1')


def _interpreter_key(c: ConfigDict, message: str) -> str:
  """`config.interpreter.KEY=VALUE` for the field an InterpreterConfig error names
  (the first one named that the config changed, else the first one named)."""
  section = c.interpreter
  found = {k: m.start() for k in section
           if (m := re.search(rf'\b{k}\b', message)) is not None}
  named = sorted(found, key=found.get)
  fields = interpreter_fields()
  changed = [k for k in named if section[k] != fields[k]]
  if not named:
    return 'config.interpreter'
  key = (changed or named)[0]
  return f'config.interpreter.{key}={section[key]!r}'


def _value(c: ConfigDict, dotted: str) -> Any:
  node: Any = c
  for part in dotted.split('.'):
    node = node.get(part) if hasattr(node, 'get') else None
  return node


def mode(c: ConfigDict) -> Mode:
  """The run's mode (`data.mode`)."""
  return Mode.parse(c.data.mode)


def position_strategy(c: ConfigDict) -> PositionStrategy:
  """The run's position strategy (`data.position_strategy`, `data.fixed_reserve`)."""
  return PositionStrategy(c.data.position_strategy, c.data.fixed_reserve)


def prompt_template(c: ConfigDict) -> str:
  """How the run renders a prompt (`data.prompt_template`)."""
  return c.data.get('prompt_template', defaults().data.prompt_template)


def interpreter_config(c: ConfigDict, **overrides: Any) -> InterpreterConfig:
  """The decoder's config for a run config.

  The run's mode, its position strategy as decoded
  (`PositionStrategy.for_decoding()`: a run trained with 'oracle' positions
  decodes with 'predicted'), the interpreter section (its missing fields take
  InterpreterConfig's defaults), one slot in sequential mode, then `overrides`
  (any InterpreterConfig field, e.g. slots=4, max_steps=256).

  Raises:
    ConfigError: an unknown key in the section or an unknown override.
    ValueError: a value InterpreterConfig rejects.
  """
  fields = {f.name for f in dataclasses.fields(InterpreterConfig)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ConfigError(f'unknown InterpreterConfig fields {unknown}; fields: {sorted(fields)}')
  section = c.interpreter.to_dict() if 'interpreter' in c else {}
  known = tuple(interpreter_fields())
  for key in section:
    if key not in known:
      raise _unknown('interpreter.', key, known)
  values = {**section, 'mode': mode(c),
            'position_strategy': position_strategy(c).for_decoding(), **overrides}
  if Mode.parse(values['mode']) is Mode.SEQUENTIAL and 'slots' not in overrides:
    values['slots'] = 1
  return InterpreterConfig(**values)


def rules_for(model_config: model_config_lib.TransformerConfig, mesh: jax.sharding.Mesh,
              overrides: Sequence[Sequence] = ()) -> list[tuple]:
  """`models.sharding.default_rules`, with the names in `overrides` (the run's
  `mesh.rules`) replaced."""
  overrides = [(name, tuple(axes) if isinstance(axes, list) else axes)
               for name, axes in overrides]
  for name, axes in overrides:
    for axis in (axes if isinstance(axes, tuple) else (axes,)):
      if axis is not None and axis not in model_sharding.MESH_AXES:
        raise ConfigError(f'config.mesh.rules: rule {(name, axes)!r} names mesh axis '
                          f'{axis!r}; the mesh axes are {model_sharding.MESH_AXES}')
  replaced = {name for name, _ in overrides}
  base = [r for r in model_sharding.default_rules(model_config, mesh) if r[0] not in replaced]
  return overrides + base


def eval_batch_size(c: ConfigDict) -> int:
  return c.eval.batch_size or c.data.batch_size


def model_config(c: ConfigDict, vocab_size: int | None = None
                 ) -> model_config_lib.TransformerConfig:
  """The frozen model config (vocab_size 0 replaced by `vocab_size`)."""
  fields = c.model.to_dict()
  if not fields['vocab_size']:
    if vocab_size is None:
      raise ConfigError('config.model.vocab_size=0 (the tokenizer\'s) needs the tokenizer')
    fields['vocab_size'] = vocab_size
  try:
    return model_config_lib.TransformerConfig.from_dict(fields)
  except ValueError as e:
    raise ConfigError(f'config.model: {e}') from None
