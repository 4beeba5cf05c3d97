"""Thread colours: one per thread, cycling, the same palette for the terminal and
HTML, and plain text when colour is off."""

import re

from pasta_jax import thread_colors


def test_paint():
  assert thread_colors.paint('x', 0) == '\033[1mx\033[0m'  # main: bold
  assert thread_colors.paint('x', 1) == '\033[36mx\033[0m'
  assert len(set(thread_colors.PALETTE)) == len(thread_colors.PALETTE)
  assert thread_colors.paint('x', len(thread_colors.PALETTE)) == thread_colors.paint('x', 0)
  assert thread_colors.paint('x', 3, color=False) == 'x'


def test_html_palette_matches_the_terminal():
  n = len(thread_colors.PALETTE)
  assert len(thread_colors.HTML_PALETTE) == n == len(set(thread_colors.HTML_PALETTE))
  assert all(re.fullmatch('#[0-9a-f]{6}', c) for c in thread_colors.HTML_PALETTE)
  assert [thread_colors.html_color(k) for k in range(2 * n)] == 2 * list(
      thread_colors.HTML_PALETTE)
