"""One colour per PASTA thread, the same in a terminal and in HTML (the thread views:
the decode CLI and `pasta_jax.thread_view`). Thread k takes entry k modulo the
palette's length; thread 0, the main thread, is bold in a terminal and near-black
in HTML."""

# (ANSI SGR sequence, HTML colour) per entry; the HTML colours are darker tones of
# the terminal colours, readable on a white page.
THREAD_COLORS = (
    ('\033[1m', '#202124'),   # main thread: bold / near-black
    ('\033[36m', '#00838f'),  # cyan
    ('\033[33m', '#b06000'),  # yellow / amber
    ('\033[35m', '#a0289b'),  # magenta
    ('\033[32m', '#1e8e3e'),  # green
    ('\033[34m', '#1a5fd0'),  # blue
    ('\033[31m', '#c5221f'),  # red
    ('\033[96m', '#0097c7'),  # bright cyan / sky blue
)
PALETTE = tuple(ansi for ansi, _ in THREAD_COLORS)
HTML_PALETTE = tuple(html for _, html in THREAD_COLORS)
RESET = '\033[0m'


def paint(text: str, thread: int, color: bool = True) -> str:
  """`text` in the terminal colour of `thread` (0: the main thread); as it is when
  not `color`."""
  if not color:
    return text
  return f'{PALETTE[thread % len(PALETTE)]}{text}{RESET}'


def html_color(thread: int) -> str:
  """The HTML colour (#rrggbb) of `thread`."""
  return HTML_PALETTE[thread % len(HTML_PALETTE)]
