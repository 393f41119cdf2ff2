"""The executor's parts on their own, each in well under a second: resolving what a render
runs from the store, the state database, and the work-folder lock."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from moldbatch.errors import WorkdirLocked
from moldbatch.execute.lock import WorkdirLock, render_running
from moldbatch.execute.state import StateDB
from moldbatch.execute.store import ArtifactStore, resolve
from moldbatch.plan.types import ExportParams, Plan, Stage, StitchParams


def _plan() -> Plan:
    """a/clip-0 -> a/stitch -> a/export, and b/clip-0 -> b/stitch -> b/export (keys by id)."""
    stages = []
    for shot in ("a", "b"):
        stitch = StitchParams((), 9, 24.0, False, 64, 64)
        stages += [
            Stage(f"{shot}/clip-0", "clip", shot, [], f"{shot}0" * 8, stitch),
            Stage(f"{shot}/stitch", "stitch", shot, [f"{shot}/clip-0"], f"{shot}1" * 8, stitch),
            Stage(
                f"{shot}/export",
                "export",
                shot,
                [f"{shot}/stitch"],
                f"{shot}2" * 8,
                ExportParams("mp4", 24.0, False),
                f"/renders/{shot}.mp4",
            ),
        ]
    return Plan("film.yaml", Path("film.yaml"), "film", [], stages)


def _put(store: ArtifactStore, stage: Stage, data: bytes = b"x") -> None:
    out = store.writer(stage.key, stage.id)
    out.path("f.bin").write_bytes(data)
    out.commit()


def test_an_empty_store_runs_every_stage(tmp_path):
    plan = _plan()
    todo, found = resolve(plan, ArtifactStore(tmp_path))
    assert [s.id for s in todo] == [s.id for s in plan.stages] and found == {}


def test_a_cached_output_leaves_what_is_upstream_of_it_unlooked_at(tmp_path):
    plan, store = _plan(), ArtifactStore(tmp_path)
    _put(store, plan.stage("a/export"))
    todo, found = resolve(plan, store)
    assert set(found) == {"a/export"}
    assert [s.id for s in todo] == ["b/clip-0", "b/stitch", "b/export"]


def test_a_corrupted_artifact_counts_as_missing_only_when_verified(tmp_path):
    plan, store = _plan(), ArtifactStore(tmp_path)
    stitch = plan.stage("a/stitch")
    _put(store, stitch, b"good")
    (store.dir_of(stitch.key) / "f.bin").write_bytes(b"evil")  # same size, other bytes
    assert store.get(stitch.key) is None
    assert store.get(stitch.key, verify=False) is not None
    todo, _ = resolve(plan, store)
    assert "a/stitch" in {s.id for s in todo}


def test_an_uncommitted_artifact_is_not_found(tmp_path):
    plan, store = _plan(), ArtifactStore(tmp_path)
    out = store.writer(plan.stage("a/clip-0").key, "a/clip-0")
    out.path("f.bin").write_bytes(b"half")  # killed before commit
    assert store.get(plan.stage("a/clip-0").key) is None
    store.clean_tmp()
    assert not store.tmp.exists()


def test_the_state_database_records_a_run_and_says_a_killed_one_was_interrupted(tmp_path):
    plan = _plan()
    db = StateDB(tmp_path)
    run = db.start_run("/spec.yaml", plan.stages)
    db.set_stage(run, "a/clip-0", "running")
    db.close()  # killed here: the run stays "running"
    db = StateDB(tmp_path)
    again = db.start_run("/spec.yaml", plan.stages)
    db.set_stage(again, "a/clip-0", "rendered", seconds=1.5)
    db.finish_run(again, "done")
    last = db.last_run("/spec.yaml")
    db.close()
    assert last["run"] == again and last["status"] == "done"
    assert {s["id"]: s["status"] for s in last["stages"]}["a/clip-0"] == "rendered"
    ro = StateDB(tmp_path, readonly=True)
    try:
        assert ro.specs() == ["/spec.yaml"]
        first = ro.db.execute("SELECT status FROM runs WHERE id=?", (run,)).fetchone()
        assert first == ("interrupted",)
    finally:
        ro.close()


def test_the_state_database_remembers_what_it_delivered(tmp_path):
    db = StateDB(tmp_path)
    target = tmp_path / "a.mp4"
    target.write_bytes(b"film")
    db.record_delivery(target, "sha", "/spec.yaml")
    assert db.delivered(target)[0] == "sha"
    assert db.delivered_for(target) == "/spec.yaml"
    assert db.delivered(tmp_path / "other.mp4") is None
    db.close()


def _hold(workdir: str, ready, done) -> None:
    with WorkdirLock(Path(workdir)):
        ready.set()
        done.wait(5)


def test_the_lock_keeps_a_second_render_out_and_is_gone_with_its_holder(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path), ready, done))
    holder.start()
    try:
        assert ready.wait(5)
        assert render_running(tmp_path)
        with pytest.raises(WorkdirLocked, match=f"pid {holder.pid}"):
            WorkdirLock(tmp_path).__enter__()
    finally:
        done.set()
        holder.join(5)
    assert not render_running(tmp_path)
    with WorkdirLock(tmp_path):  # free again
        pass


def test_a_lean_gc_keeps_finished_shots_files_and_everything_of_an_unfinished_one(tmp_path):
    from moldbatch.execute.store import collect_garbage

    plan, store = _plan(), ArtifactStore(tmp_path)
    for sid in ("a/clip-0", "a/stitch", "a/export", "b/clip-0"):  # b stopped after its clip
        _put(store, plan.stage(sid))
    plan.path = tmp_path / "film.yaml"
    plan.path.write_text("")
    removed, _, _ = collect_garbage([plan], tmp_path, lean=True)
    assert removed == 2  # a's clip and stitch: its export is what a render resumes from
    kept = {s.id for s in plan.stages if store.get(s.key) is not None}
    assert kept == {"a/export", "b/clip-0"}
    todo, _ = resolve(plan, store)
    assert [s.id for s in todo] == ["b/stitch", "b/export"]  # nothing done is lost
