"""The records of the PASTA datasets, as a data source returns them.

Every split the builders in `tfds_builders` write has the same text features
(prompt, annotated_response, plain_response, family, facts (JSON), extras (JSON)),
read back by random access through `tfds.data_source` as bytes. This module needs
neither TensorFlow Datasets nor the builders, so the input pipeline and the
evaluation can read records without importing them.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def decode_text(value: Any) -> str:
  """A text feature read from a data source (bytes) as str."""
  if isinstance(value, bytes):
    return value.decode('utf-8')
  if isinstance(value, np.ndarray):
    return decode_text(value.item())
  return str(value)
