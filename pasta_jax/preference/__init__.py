"""Stage 2: preference optimisation (BoNBoN) of a PASTA model (docs/design.md section 7)."""
