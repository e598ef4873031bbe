"""Pull progress rendering: plain lines for logs, bars redrawn in place on a terminal."""
from __future__ import annotations

import io

from minictr.progress import LineProgress, TtyProgress, human, make_progress


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_make_progress_picks_by_isatty():
    assert type(make_progress(io.StringIO())) is LineProgress
    assert type(make_progress(Tty())) is TtyProgress


def test_line_progress():
    out = io.StringIO()
    p = make_progress(out)
    p.message("img: manifest sha256:1")
    p.start("k", "abc", 2_500_000)
    p.update("k", 100)
    p.finish("k", "abc", "done")
    p.finish("j", "def", "exists")
    assert out.getvalue().splitlines() == ["img: manifest sha256:1", "abc: downloading 2.5MB",
                                           "abc: pulled", "def: already exists"]


def test_tty_progress_redraws_bars():
    out = Tty()
    now = [0.0]
    p = TtyProgress(out, clock=lambda: now[0])
    p.start("a", "aaa", 1000)
    p.start("b", "bbb", 2000)
    now[0] = 1.0
    p.update("a", 500)
    p.finish("b", "bbb", "exists")
    p.close()
    last = out.getvalue().split("\x1b[2F\x1b[J")[-1]
    assert last.splitlines() == [f"aaa: [{'=' * 12}{' ' * 12}] 500B/1.0kB", "bbb: already exists"]


def test_human():
    assert [human(n) for n in (5, 1500, 2_000_000, 3e9)] == ["5B", "1.5kB", "2.0MB", "3.0GB"]
