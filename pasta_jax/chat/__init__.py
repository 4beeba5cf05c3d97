"""OpenAI-compatible chat-completions services, shared by the annotator
(`pasta_jax.annotation`, docs/annotation.md) and the judge (`pasta_jax.judging`,
docs/judge.md).

* `service`: the client (the official `openai` package) with our own retries, a shared
  Retry-After pause, per-request timeouts, counters and optional log-probabilities.
* `cache`: the append-only reply cache that lets a killed run resume without asking twice.
* `flags`: the command-line flags that configure a service, defined once per prefix.
"""
