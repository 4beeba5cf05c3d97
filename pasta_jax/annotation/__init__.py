"""Stage 0: annotating plain responses with PASTA-LANG (docs/annotation.md).

`python -m pasta_jax.annotate` is the command line. The library:

* `formats`: input readers (prompt/response, Alpaca, ShareGPT, OpenAI messages).
* `validation`: an annotation is valid when it parses and strips back to the
  response (after `validation.normalize`); promised lengths (`Lengths`).
* `prompt` and `examples.toml`: the llm annotator's few-shot prompt.
* `service`: the chat-completions client with retries; `cache`: its reply cache.
* `rules`: the rule-based (APAR-style) annotator.
* `runner`: the annotators, outcomes, and the run that writes the output.
"""
