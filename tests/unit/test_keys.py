"""Content keys: the same film gives the same keys in YAML and TOML and wherever it lives; an
edit changes the keys of what it touches and of what follows, and nothing else."""

from __future__ import annotations

import shutil
from pathlib import Path

from moldbatch.plan.planner import plan_file

from conftest import write

CHAIN = """\
version: 1
defaults: {{model: ltx-2-tiny:random, width: 64, height: 64}}
output: film.mp4
shots:
  - id: intro
    prompt: a quiet harbour at dawn
    frames: 17
  - id: walk
    frames: 100
    clip_frames: 25
    motion_tail: 1
    image: assets/start.png
    prompts: [{prompts}]
"""
PROMPTS = ["one", "two", "three", "four", "five"]


def keys(path: Path) -> dict[str, str]:
    plan = plan_file(path)
    assert plan.valid, [str(d) for d in plan.diagnostics]
    return {s.id: s.key for s in plan.stages}


def chain(folder: Path, prompts=PROMPTS, name="film.yaml", extra="") -> Path:
    return write(folder, name, CHAIN.format(prompts=", ".join(prompts)) + extra)


def test_yaml_and_toml_forms_give_the_same_keys():
    corpus = Path(__file__).resolve().parents[2] / "specs" / "conformance" / "valid"
    assert keys(corpus / "chain-400.yaml") == keys(corpus / "chain-400.toml")


def test_keys_do_not_depend_on_where_the_spec_lives(film_dir: Path, tmp_path_factory):
    a = keys(chain(film_dir))
    other = tmp_path_factory.mktemp("elsewhere")
    shutil.copytree(film_dir / "assets", other / "assets")
    assert keys(chain(other, name="renamed.yml")) == a


def test_editing_clip_3_prompt_changes_clip_3_and_what_follows_only(film_dir: Path):
    before = keys(chain(film_dir))
    edited = PROMPTS.copy()
    edited[3] = "four at night"
    after = keys(chain(film_dir, edited))
    changed = {sid for sid in before if not sid.startswith("encode/") and before[sid] != after[sid]}
    assert changed == {"walk/clip-3", "walk/clip-4", "walk/stitch", "walk/export", "film/join"}
    # the text phase: the old prompt's encode goes, the new one's comes, the others stay
    gone = {s for s in before if s.startswith("encode/") and s not in after}
    new = {s for s in after if s.startswith("encode/") and s not in before}
    assert len(gone) == len(new) == 1
    assert {s for s in before if s.startswith("encode/")} - gone == (
        {s for s in after if s.startswith("encode/")} - new
    )


def test_changing_an_input_image_changes_every_clip_it_flows_into(film_dir: Path):
    spec = chain(film_dir)
    before = keys(spec)
    (film_dir / "assets" / "start.png").write_bytes((film_dir / "assets" / "end.png").read_bytes())
    after = keys(spec)
    changed = {sid for sid in before if before[sid] != after[sid]}
    # the first-frame image conditions clip 0, which carries into every later clip
    assert {"walk/clip-0", "walk/clip-4", "walk/export"} <= changed
    assert "intro/clip-0" not in changed and "intro/export" not in changed


def test_format_change_touches_only_the_export(film_dir: Path):
    before = keys(chain(film_dir, extra="    format: gif\n    audio: false\n"))
    after = keys(chain(film_dir, extra="    format: webp\n    audio: false\n"))
    changed = {sid for sid in before if before[sid] != after[sid]}
    assert changed == {"walk/export"}


def test_turning_audio_off_rerenders_the_clips_without_sound(film_dir: Path):
    before = keys(chain(film_dir))
    after = keys(chain(film_dir, extra="    audio: false\n"))
    changed = {sid for sid in before if before[sid] != after[sid]}
    assert "walk/clip-0" in changed and "intro/clip-0" not in changed


def test_output_paths_are_not_part_of_any_key(film_dir: Path):
    spec = chain(film_dir)
    a = keys(spec)
    spec.write_text(spec.read_text().replace("output: film.mp4", "output: out/final.mp4"))
    assert keys(spec) == a
    plan = plan_file(spec, out_dir=film_dir / "elsewhere")
    assert {s.id: s.key for s in plan.stages} == a


def test_every_stage_key_is_distinct(film_dir: Path):
    k = keys(chain(film_dir))
    assert len(set(k.values())) == len(k)


def test_pipeline_names_that_render_the_same_key_the_same(tmp_path):
    """On a distilled model `distilled` and `two-stage` are one recipe; `one-stage` is another
    (one full-size pass), and `a2vid` follows a file: those key differently."""
    head = "version: 1\nshots:\n  - {id: s, model: ltx-2-19b-distilled:fp8, prompt: x, frames: 97"
    got = {}
    for name in ("distilled", "two-stage", "one-stage"):
        got[name] = keys(write(tmp_path, f"{name}.yaml", head + f", pipeline: {name}}}\n"))
    assert got["distilled"] == got["two-stage"]
    assert got["one-stage"]["s/clip-0"] != got["distilled"]["s/clip-0"]
    assert "s/refine-0" in got["distilled"] and "s/refine-0" not in got["one-stage"]


def test_keys_are_the_hash_of_the_key_document():
    """The planner writes the key text without building the document: it is the document's
    canonical JSON, byte for byte, for every stage of every conformance spec (so the fast path
    changed no artifact's key)."""
    import hashlib
    import json

    from moldbatch.plan.keys import KEY_VERSION
    from moldbatch.plan.types import key_doc

    corpus = Path(__file__).resolve().parents[2] / "specs" / "conformance" / "valid"
    by_key = {}
    for spec in sorted(p for p in corpus.iterdir() if p.suffix in (".yaml", ".toml")):
        plan = plan_file(spec)
        assert plan.valid, spec
        by_key |= {s.key: s for s in plan.stages}
        for s in plan.stages:
            needs = [by_key_of(plan, n) for n in s.needs]
            doc = {"v": KEY_VERSION, "kind": s.kind, "params": key_doc(s.params), "needs": needs}
            text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            assert hashlib.sha256(text.encode()).hexdigest() == s.key, (spec.name, s.id)
    kinds = {s.kind for s in by_key.values()}
    assert kinds >= {"encode", "clip", "refine", "upscale", "stitch", "export", "join"}


def by_key_of(plan, stage_id: str) -> str:
    return next(s.key for s in plan.stages if s.id == stage_id)


def test_key_text_of_awkward_values():
    """Floats that JSON spells its own way, non-ASCII and escaped text."""
    import json

    from moldbatch.plan.keys import canonical
    from moldbatch.plan.types import ExportParams, JoinParams, key_doc

    for value in (
        ExportParams("mp4", 23.976, True),
        ExportParams("gif", 1e-20, False),
        ExportParams("gif", float("inf"), False),
        JoinParams("mp4", True, 24.0, ("ünïcødé", 'quo"te\\', "tab\tnew\nline", "\x00", "😀")),
    ):
        doc = key_doc(value)
        want = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert canonical(value) == want
