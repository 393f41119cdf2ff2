"""Random and mangled specs only ever give clean diagnostics: never a traceback."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moldbatch.plan.planner import plan_file
from moldbatch.spec.schema import FILM_FIELDS, SHOT_FIELDS

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SEED_TEXT = (EXAMPLES / "quickstart.yaml").read_text()

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(
        [
            "ltx-2-tiny:random",
            "x2",
            "x1.5",
            "mp4",
            "gif",
            "smooth",
            "fade",
            "keyframe",
            "assets/start.png",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
shot = st.dictionaries(st.sampled_from(SHOT_FIELDS), values, max_size=8)
film = st.fixed_dictionaries(
    {},
    optional={
        "version": st.one_of(st.just(1), values),
        "name": values,
        "defaults": st.one_of(shot, values),
        "output": values,
        "shots": st.one_of(st.lists(shot, max_size=3), values),
    },
) | st.dictionaries(st.sampled_from(FILM_FIELDS + ("extra",)), values, max_size=5)

FAST = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _check(path: Path) -> None:
    plan = plan_file(path)
    for d in plan.diagnostics:
        assert d.line >= 1 and d.column >= 1
        assert "\n" not in str(d) and "Traceback" not in str(d)
    json.dumps(plan.to_json())  # the --json form is always serialisable


@FAST
@given(doc=film, as_toml=st.booleans())
def test_random_documents_give_clean_errors(doc, as_toml):
    with tempfile.TemporaryDirectory() as d:
        if as_toml:
            path = Path(d) / "film.toml"
            path.write_text(_toml(doc))
        else:
            path = Path(d) / "film.yaml"
            path.write_text(yaml.safe_dump(doc, allow_unicode=True))
        _check(path)


@FAST
@given(
    cuts=st.lists(
        st.tuples(st.integers(0, len(SEED_TEXT)), st.integers(0, 12), st.text(max_size=6)),
        max_size=6,
    )
)
def test_mangled_text_gives_clean_errors(cuts):
    text = SEED_TEXT
    for at, length, insert in cuts:
        text = text[:at] + insert + text[at + length :]
    with tempfile.TemporaryDirectory() as d:
        for name in ("film.yaml", "film.toml"):
            path = Path(d) / name
            path.write_text(text)
            _check(path)


@FAST
@given(data=st.binary(max_size=200))
def test_binary_garbage_gives_clean_errors(data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "film.yaml"
        path.write_bytes(data)
        _check(path)


def _toml(doc) -> str:
    """A rough TOML writer for fuzzing: strings, numbers, bools, arrays and tables."""

    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v) if v == v and abs(v) != float("inf") else "nan"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v if x is not None) + "]"
        if isinstance(v, dict):
            return (
                "{"
                + ", ".join(f"{json.dumps(k)} = {val(x)}" for k, x in v.items() if x is not None)
                + "}"
            )
        return '""'

    if not isinstance(doc, dict):
        return f"x = {val(doc)}\n"
    return "".join(f"{json.dumps(k)} = {val(v)}\n" for k, v in doc.items() if v is not None)
