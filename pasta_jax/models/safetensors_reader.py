"""A small reader of the safetensors format (no dependency on the `safetensors` package).

File layout: an unsigned 64-bit little-endian header length N; N bytes of JSON
mapping tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (offsets
relative to the end of the header; an optional "__metadata__" entry of strings);
then the raw little-endian, row-major tensor data. Sharded checkpoints add
`model.safetensors.index.json` with a "weight_map" from tensor name to file.

Tensors are returned as read-only numpy arrays backed by a memory map, so a
tensor's bytes are read only when it is used.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Mapping

import ml_dtypes
import numpy as np

DTYPES = {
    'F64': np.dtype('<f8'),
    'F32': np.dtype('<f4'),
    'F16': np.dtype('<f2'),
    'BF16': np.dtype(ml_dtypes.bfloat16),
    'I64': np.dtype('<i8'),
    'I32': np.dtype('<i4'),
    'I16': np.dtype('<i2'),
    'I8': np.dtype('i1'),
    'U8': np.dtype('u1'),
    'BOOL': np.dtype('?'),
}

SINGLE_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'
_MAX_HEADER_BYTES = 100 * 1024 * 1024


class SafetensorsError(ValueError):
  """A malformed or unsupported safetensors file."""


def read_header(path: str) -> tuple[dict, int]:
  """Returns (tensor entries without __metadata__, byte offset of the data)."""
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    prefix = f.read(8)
    if len(prefix) < 8:
      raise SafetensorsError(f'{path}: shorter than the 8-byte header length')
    (n,) = struct.unpack('<Q', prefix)
    if n > min(_MAX_HEADER_BYTES, size - 8):
      raise SafetensorsError(f'{path}: header length {n} exceeds the file '
                             f'({size} bytes) or {_MAX_HEADER_BYTES} bytes')
    raw = f.read(n)
  try:
    header = json.loads(raw.decode('utf-8'))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise SafetensorsError(f'{path}: header is not JSON: {e}') from None
  if not isinstance(header, dict):
    raise SafetensorsError(f'{path}: header is not a JSON object')
  header.pop('__metadata__', None)
  return header, 8 + n


def read_file(path: str) -> dict[str, np.ndarray]:
  """All tensors of one .safetensors file, by name."""
  header, data_start = read_header(path)
  data_bytes = os.path.getsize(path) - data_start
  if header and data_bytes > 0:
    buffer = np.memmap(path, dtype=np.uint8, mode='r', offset=data_start,
                       shape=(data_bytes,))
  else:
    buffer = np.zeros(0, np.uint8)
  tensors = {}
  for name, entry in header.items():
    try:
      dtype_name, shape = entry['dtype'], entry['shape']
      begin, end = entry['data_offsets']
    except (KeyError, TypeError, ValueError):
      raise SafetensorsError(f'{path}: tensor {name!r} needs dtype, shape and '
                             f'data_offsets [begin, end], got {entry!r}') from None
    if dtype_name not in DTYPES:
      raise SafetensorsError(f'{path}: tensor {name!r} has unsupported dtype '
                             f'{dtype_name!r}; supported: {sorted(DTYPES)}')
    dtype = DTYPES[dtype_name]
    if not (isinstance(shape, list) and
            all(isinstance(d, int) and d >= 0 for d in shape)):
      raise SafetensorsError(f'{path}: tensor {name!r} has a bad shape {shape!r}')
    expected = math.prod(shape) * dtype.itemsize
    if not (0 <= begin <= end <= data_bytes and end - begin == expected):
      raise SafetensorsError(
          f'{path}: tensor {name!r} ({dtype_name}{shape}) has data_offsets '
          f'[{begin}, {end}], expected {expected} bytes within the '
          f'{data_bytes}-byte data section')
    array = np.frombuffer(buffer[begin:end], dtype=dtype) if expected else (
        np.zeros(0, dtype))
    tensors[name] = array.reshape(shape)
  return tensors


def read_dir(directory: str) -> dict[str, np.ndarray]:
  """The tensors of a checkpoint directory: `model.safetensors`, or the shards
  named by `model.safetensors.index.json`."""
  index_path = os.path.join(directory, INDEX_FILE)
  if os.path.exists(index_path):
    with open(index_path) as f:
      weight_map = json.load(f).get('weight_map')
    if not isinstance(weight_map, dict):
      raise SafetensorsError(f'{index_path}: no "weight_map" object')
    tensors = {}
    for filename in sorted(set(weight_map.values())):
      shard = read_file(os.path.join(directory, filename))
      for name, array in shard.items():
        if name in tensors:
          raise SafetensorsError(f'{directory}: tensor {name!r} is in several '
                                 'shards')
        tensors[name] = array
    _check_index(index_path, weight_map, tensors)
    return tensors
  single = os.path.join(directory, SINGLE_FILE)
  if os.path.exists(single):
    return read_file(single)
  raise FileNotFoundError(f'{directory}: neither {SINGLE_FILE} nor {INDEX_FILE}')


def _check_index(index_path: str, weight_map: Mapping[str, str],
                 tensors: Mapping[str, np.ndarray]):
  missing = sorted(set(weight_map) - set(tensors))
  if missing:
    raise SafetensorsError(f'{index_path}: tensors listed in the index but in '
                           f'no shard: {missing}')
