"""The reply cache: an append-only JSONL file of the service's answers, by content.

Each line is `{"key": K, "reply": {...}}`, where K is the sha256 of everything that
makes a request (`request_key`: the model, the sampling settings, the prompt
version and the whole chat, so the response and the examples too). A line is
written and flushed as soon as its answer arrives, so a run that is killed keeps
every answer it got, and the same command run again asks the service only for the
others (docs/annotation.md, "Cache and resume"). Requests with the same key that
are in flight at once are sent once (`get_or_compute`).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from typing import Any, Callable

from pasta_jax import errors


def request_key(request: dict[str, Any]) -> str:
  """The sha256 of a request (model, settings, prompt version, messages) as JSON."""
  text = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(',', ':'))
  return hashlib.sha256(text.encode('utf-8')).hexdigest()


class Cache:
  """Replies by request key, in memory and in an append-only JSONL file.

  Opening reads the file; a last line cut short by a killed run is dropped (and
  cut from the file), any other damaged line is a `DataError` naming it.
  """

  def __init__(self, path: str):
    self.path = path
    self._entries: dict[str, dict[str, Any]] = {}
    self._lock = threading.Lock()
    self._in_flight: dict[str, threading.Event] = {}
    self._file = None
    if os.path.exists(path):
      self._load()

  def _load(self) -> None:
    with open(self.path, 'rb') as f:
      data = f.read()
    lines = data.split(b'\n')
    tail = lines.pop()  # after the last newline: b'' unless a write was cut short
    for number, raw in enumerate(lines, 1):
      if raw.strip():
        try:
          self._read_line(raw)
        except ValueError as e:
          raise errors.DataError(
              f'{self.path}:{number}: damaged cache line ({e}); delete that line (its '
              'request is sent again) or the file') from None
    if tail.strip():
      try:
        self._read_line(tail)
        ending = b'\n'  # a whole line without its newline: finish it
      except ValueError:
        ending = None  # the write of a killed run, cut short: drop it
      with open(self.path, 'r+b') as f:
        if ending:
          f.seek(0, os.SEEK_END)
          f.write(ending)
        else:
          f.truncate(len(data) - len(tail))

  def _read_line(self, raw: bytes) -> None:
    try:
      row = json.loads(raw.decode('utf-8'))
    except UnicodeDecodeError as e:
      raise ValueError(f'invalid UTF-8: {e}') from None
    if not (isinstance(row, dict) and isinstance(row.get('key'), str)
            and isinstance(row.get('reply'), dict)):
      raise ValueError('expected {"key": "...", "reply": {...}}')
    self._entries[row['key']] = row['reply']

  def __len__(self) -> int:
    return len(self._entries)

  def __contains__(self, key: str) -> bool:
    return key in self._entries

  def get(self, key: str) -> dict[str, Any] | None:
    return self._entries.get(key)

  def put(self, key: str, reply: dict[str, Any]) -> None:
    """Stores a reply and appends it to the file (flushed before it returns)."""
    line = json.dumps({'key': key, 'reply': reply}, ensure_ascii=False) + '\n'
    with self._lock:
      if self._file is None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        self._file = open(self.path, 'a', encoding='utf-8')  # pylint: disable=consider-using-with
      self._file.write(line)
      self._file.flush()
      self._entries[key] = reply

  def get_or_compute(self, key: str, compute: Callable[[], dict[str, Any]]
                     ) -> tuple[dict[str, Any], bool]:
    """(reply, from_cache): the cached reply, or `compute()`'s, stored.

    While one thread computes a key, others asking for it wait for its reply
    (and compute it themselves if it failed).
    """
    while True:
      with self._lock:
        if key in self._entries:
          return self._entries[key], True
        event = self._in_flight.get(key)
        owner = event is None
        if owner:
          event = self._in_flight[key] = threading.Event()
      if not owner:
        event.wait()
        continue
      try:
        reply = compute()
        self.put(key, reply)
        return reply, False
      finally:
        with self._lock:
          del self._in_flight[key]
        event.set()

  def close(self) -> None:
    with self._lock:
      if self._file is not None:
        self._file.close()
        self._file = None
