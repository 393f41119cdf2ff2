"""What a render says while it runs: bars in a terminal, plain lines elsewhere."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

from rich.console import Console

from moldbatch.execute.progress import StageBars, StageLines


def stage(sid: str, kind: str = "clip", steps: int = 30, shot: str = "walk"):
    params = SimpleNamespace(steps=steps, model="ltx-2-19b-distilled:fp8")
    return SimpleNamespace(id=sid, kind=kind, shot=shot, params=params, steps=steps)


def test_terminal_bars_say_what_loads_label_units_show_the_time_left_and_mark_a_failure():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    good, bad = stage("walk/clip-0"), stage("walk/clip-1")
    estimates = {"walk/clip-0": 60.0, "walk/clip-1": 60.0}
    with StageBars(console, [good, bad], enabled=True, estimates=estimates) as bars:
        step = bars.start(good)
        bars.progress.refresh()
        loading = out.getvalue()
        assert "loading ltx-2-19b-distilled:fp8" in loading  # before the first step
        assert "~2.0 min left" in loading and "stages" in loading and "steps" in loading
        for i in range(1, 31):
            step(i, 30)
        bars.done(good, seconds=30.0)
        step = bars.start(bad)
        bars.progress.refresh()
        assert "walk/clip-1 (preparing" in out.getvalue()  # the model is loaded already
        for i in range(1, 8):
            step(i, 30)
        bars.failed(bad, 4.0, "CUDA out of memory")
    final = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "\n", out.getvalue()).split("\n")
    final = [ln for ln in final if ln.strip()]
    last = {line.split()[0]: line for line in final[-8:] if line.strip()}
    assert "7/30" in last["✗"] and "failed" in last["✗"], final[-8:]  # not complete
    assert any("walk/clip-0" in ln and "30/30" in ln for ln in final[-8:])
    assert any(re.match(r"Film\s.*\s2/2\s+stages", ln) for ln in final[-8:]), final[-8:]


def test_plain_lines_say_each_stage_once_with_seconds_and_the_time_left():
    out = io.StringIO()
    a, b = stage("a/clip-0"), stage("a/export", kind="export", steps=0)
    lines = StageLines([a, b], {"a/clip-0": 10.0, "a/export": 0.0}, stream=out)
    lines.cached(stage("z/clip-0"))
    lines.start(a)
    lines.done(a, 4.0)
    lines.start(b)
    lines.failed(b, 0.5, "disk full")
    assert out.getvalue().splitlines() == [
        "moldbatch: z/clip-0 cached",
        "moldbatch: [1/2] a/clip-0 started (clip, 30 steps, ltx-2-19b-distilled:fp8); ~10 s left",
        "moldbatch: [1/2] a/clip-0 rendered in 4.0s",
        "moldbatch: [2/2] a/export started (export)",
        "moldbatch: [2/2] a/export failed after 0.5s: disk full",
    ]


def test_plain_lines_are_chosen_off_a_terminal_and_on_a_dumb_one(monkeypatch):
    from moldbatch.execute.progress import plain_log_wanted

    assert plain_log_wanted(Console(file=io.StringIO()))  # a pipe, a CI log, a file
    monkeypatch.setenv("TERM", "xterm-256color")
    assert not plain_log_wanted(Console(file=io.StringIO(), force_terminal=True))
    monkeypatch.setenv("TERM", "dumb")
    assert plain_log_wanted(Console(file=io.StringIO(), force_terminal=True))


def test_the_time_left_is_the_estimate_corrected_by_the_clock_after_the_model_loaded():
    from moldbatch.execute.progress import TimeLeft

    todo = [stage(f"s/clip-{i}") for i in range(3)]
    left = TimeLeft({s.id: 10.0 for s in todo}, todo)
    assert left.seconds() == 30.0
    left.finish("s/clip-0", 100.0)  # the first clip loaded the model: not a rate
    assert left.seconds() == 20.0
    left.finish("s/clip-1", 5.0)  # twice as fast as estimated
    assert left.seconds() == 5.0 and left.text() == "~5.0 s left"
    left.finish("s/clip-2", 5.0)
    assert left.seconds() == 0.0 and left.text() == ""
