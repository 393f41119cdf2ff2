"""Chain arithmetic: clip counts, the tight last clip, and where shot frames land."""

from __future__ import annotations

from math import ceil

from hypothesis import given
from hypothesis import strategies as st

from moldbatch.models import on_frame_grid
from moldbatch.plan.chain import chain_clips, locate_frame


def test_reference_chain_matches_the_issue_example():
    spans = chain_clips(400, 97, 4)
    assert [s.frames for s in spans] == [97, 97, 97, 97, 33]
    assert sum(s.frames for s in spans) == 421


def test_full_last_clip_renders_what_mold_renders():
    spans = chain_clips(400, 97, 4, "full")
    assert [s.frames for s in spans] == [97] * 5
    assert sum(s.frames for s in spans) == 485
    # mold delivers C + (n - 1)(C - T) = 469 frames before the trim
    assert spans[-1].end == 469


def test_a_shot_that_fits_one_clip_is_one_clip_on_the_grid():
    assert [s.frames for s in chain_clips(90, 97, 4)] == [97]
    assert [s.frames for s in chain_clips(97, 97, 4)] == [97]


@given(total=st.integers(1, 3000), k=st.integers(1, 12), data=st.data())
def test_chain_covers_the_shot_with_grid_clips_and_no_waste(total, k, data):
    clip = 8 * k + 1
    overlap = data.draw(st.integers(0, clip - 1))
    spans = chain_clips(total, clip, overlap)
    assert all(on_frame_grid(s.frames) and s.frames <= clip for s in spans)
    assert spans[-1].end >= total  # enough frames
    if total > clip:
        assert len(spans) == 1 + ceil((total - clip) / (clip - overlap))
        # tight: one grid step less in the last clip would not cover the shot
        last = spans[-1]
        assert last.frames - 8 < overlap + 1 or last.start + last.frames - 8 < total
    for a, b in zip(spans, spans[1:], strict=False):
        assert b.start == a.end - overlap  # each clip starts `overlap` frames before the end


@given(total=st.integers(98, 1500), frame_frac=st.floats(0, 0.999))
def test_every_shot_frame_lands_in_a_kept_part_of_one_clip(total, frame_frac):
    spans = chain_clips(total, 97, 4)
    frame = int(frame_frac * total)
    idx, local = locate_frame(spans, frame)
    span = spans[idx]
    assert 0 <= local < span.frames
    assert span.start + local == frame
    assert frame >= span.keep_from
