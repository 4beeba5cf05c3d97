"""Stage 0: annotating plain responses with PASTA-LANG (docs/annotation.md).

`python -m pasta_jax.annotate` is the command line; requests go through
`pasta_jax.chat` (the chat-completions client with retries, and its reply cache).
The library:

* `formats`: input readers (prompt/response, Alpaca, ShareGPT, OpenAI messages).
* `validation`: an annotation is valid when it parses and strips back to the
  response (after `validation.normalize`); promised lengths (`Lengths`).
* `prompt` and `examples.toml`: the llm annotator's few-shot prompt.
* `rules`: the rule-based (APAR-style) annotator.
* `runner`: the annotators, outcomes, and the run that writes the output.
"""
