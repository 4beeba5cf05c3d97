"""Thread colours: one per thread, cycling, and plain text when colour is off."""

from pasta_jax import thread_colors


def test_paint():
  assert thread_colors.paint('x', 0) == '\033[1mx\033[0m'  # main: bold
  assert thread_colors.paint('x', 1) == '\033[36mx\033[0m'
  assert len(set(thread_colors.PALETTE)) == len(thread_colors.PALETTE)
  assert thread_colors.paint('x', len(thread_colors.PALETTE)) == thread_colors.paint('x', 0)
  assert thread_colors.paint('x', 3, color=False) == 'x'
