"""One terminal colour per PASTA thread (the main thread bold), for the thread views."""

PALETTE = ('\033[1m', '\033[36m', '\033[33m', '\033[35m', '\033[32m', '\033[34m',
           '\033[31m', '\033[96m')
RESET = '\033[0m'


def paint(text: str, thread: int, color: bool = True) -> str:
  """`text` in the colour of `thread` (0: the main thread); as it is when not `color`."""
  if not color:
    return text
  return f'{PALETTE[thread % len(PALETTE)]}{text}{RESET}'
