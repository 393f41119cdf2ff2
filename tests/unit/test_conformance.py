"""The conformance corpus in specs/conformance: every valid spec plans to its expected plan,
every invalid one fails with exactly its expected errors (file:line:col: path: message).

Regenerate the expectations after an intended change with
`MOLDBATCH_UPDATE_CORPUS=1 pytest tests/unit/test_conformance.py`, then review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from moldbatch.plan.planner import plan_file

CORPUS = Path(__file__).resolve().parents[2] / "specs" / "conformance"
UPDATE = os.environ.get("MOLDBATCH_UPDATE_CORPUS") == "1"
SPECS = ("*.yaml", "*.toml")


def _specs(kind: str) -> list[Path]:
    return sorted(p for pattern in SPECS for p in (CORPUS / kind).glob(pattern))


def _relative(value, root: Path):
    """Absolute paths inside a plan, made relative to the spec's folder (portable)."""
    if isinstance(value, dict):
        return {k: _relative(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(v, root) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        return os.path.relpath(value, root)
    return value


def expected_plan(spec: Path) -> dict:
    plan = plan_file(spec, display=spec.name)
    doc = plan.to_json()
    return _relative(
        {
            "warnings": [str(w) for w in plan.warnings],
            "shots": doc["shots"],
            "output": doc["output"],
            "stages": [
                {"id": s["id"], "kind": s["kind"], "needs": s["needs"]} for s in doc["stages"]
            ],
        },
        spec.parent,
    )


@pytest.mark.parametrize("spec", _specs("valid"), ids=lambda p: p.name)
def test_valid_spec_plans_as_expected(spec: Path):
    got = expected_plan(spec)
    want_file = spec.with_suffix(spec.suffix + ".plan.json")
    if UPDATE:
        want_file.write_text(json.dumps(got, indent=1) + "\n")
    assert plan_file(spec).valid
    assert got == json.loads(want_file.read_text())


@pytest.mark.parametrize("spec", _specs("invalid"), ids=lambda p: p.name)
def test_invalid_spec_fails_with_expected_errors(spec: Path):
    plan = plan_file(spec, display=spec.name)
    got = [str(d) for d in plan.diagnostics]
    want_file = spec.with_suffix(spec.suffix + ".errors")
    if UPDATE:
        want_file.write_text("\n".join(got) + "\n")
    assert not plan.valid
    assert got == want_file.read_text().splitlines()


def test_corpus_is_not_empty():
    # guards against a glob that silently matches nothing
    assert len(_specs("valid")) >= 8 and len(_specs("invalid")) >= 25
