"""`<spec>.report.html` in the output folder after `moldbatch render` (named after the spec, so
that specs sharing a folder keep their own): every shot playable inline,
its contact sheet (also written as `<shot>.contact.png` for places that show no HTML), the
time of every stage (rendered or cached) against its estimate, and the spec excerpt that
produced each shot. Videos and sheets are referenced by relative path, so the folder can be
moved, zipped or served as it is.

The page records whether each video and image loaded into `#measured`, for headless checks.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from moldbatch.fsio import atomic_write
from moldbatch.review.cost import estimate, format_seconds
from moldbatch.review.page import CSS, esc

REPORT = "report.html"  # after the spec's name: `<spec>.report.html`


def report_name(plan) -> str:
    """The report's file name: one per spec, so that specs sharing an out folder keep theirs."""
    return f"{plan.path.stem}.{REPORT}"


STYLE = """
.shot { border-top:1px solid var(--line); padding:16px 0; }
.media { display:flex; gap:16px; flex-wrap:wrap; align-items:flex-start; margin-top:8px; }
.media video, .media img.anim { max-width:640px; background:#000;
  border-radius:4px; image-rendering:pixelated; }
.media img.sheet { max-width:100%; border-radius:4px; }
.rendered { color:var(--render); } .cached-t { color:var(--cached); }
.failed, .skipped { color:var(--seam); }
details summary { cursor:pointer; color:var(--dim); }
"""

SCRIPT = """
(function () {
  const out = { media: [] };
  const done = () => { document.getElementById('measured').textContent = JSON.stringify(out); };
  for (const m of document.querySelectorAll('video, img.anim, img.sheet')) {
    const rec = { tag: m.tagName.toLowerCase(), src: m.getAttribute('src'), shot: m.dataset.shot,
      state: 'pending' };
    out.media.push(rec);
    const ok = () => { rec.state = 'loaded'; if (m.tagName === 'VIDEO') {
        rec.width = m.videoWidth; rec.height = m.videoHeight; rec.duration = m.duration;
      } else { rec.width = m.naturalWidth; rec.height = m.naturalHeight; } done(); };
    const bad = () => { rec.state = 'error'; done(); };
    if (m.tagName === 'VIDEO') {
      if (m.readyState >= 2) ok(); else { m.addEventListener('loadeddata', ok);
        m.addEventListener('error', bad); }
    } else {
      if (m.complete && m.naturalWidth) ok(); else if (m.complete) bad();
      else { m.addEventListener('load', ok); m.addEventListener('error', bad); }
    }
  }
  done();
})();
"""


def default_out_dir(plan, out: Path | None) -> Path:
    """Where the shot files went: `--out`, else the folder the planner put them in."""
    if out is not None:
        return Path(out)
    for shot in plan.shots:
        if shot.output_path:
            return Path(shot.output_path).parent
    return plan.path.resolve().parent / "renders"


def spec_excerpts(plan) -> tuple[str, dict[str, str]]:
    """The spec's text, and each shot's own lines of it (by shot id)."""
    from moldbatch.spec.source import read_source

    try:
        src = read_source(plan.path, plan.file)
        text = plan.path.read_text()
    except Exception:  # noqa: BLE001 - the spec may have moved since it was planned
        return "", {}
    lines = text.splitlines()
    shots = src.data.get("shots") if isinstance(src.data, dict) else None
    if not isinstance(shots, list):
        return text, {}
    starts = []
    for i, shot in enumerate(shots):
        pos = src.positions.get(("shots", i))
        if isinstance(shot, dict) and pos is not None:
            starts.append((pos[0], shot.get("id")))
    out = {}
    for n, (line, shot_id) in enumerate(starts):
        end = starts[n + 1][0] - 1 if n + 1 < len(starts) else len(lines)
        chunk = lines[line - 1 : end]
        while chunk and not chunk[-1].strip():
            chunk.pop()
        if isinstance(shot_id, str):
            out[shot_id] = "\n".join(chunk)
    return text, out


def _rel(path: str | Path, base: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), base.resolve())).as_posix()


def _media(path: Path, out_dir: Path, fmt: str, shot_id: str, width: int) -> str:
    src = esc(_rel(path, out_dir))
    width = min(480, max(240, width * 3))
    if fmt == "mp4":
        return (
            f'<video controls preload="auto" src="{src}" data-shot="{esc(shot_id)}" '
            f'width="{width}"></video>'
        )
    return f'<img class="anim" src="{src}" data-shot="{esc(shot_id)}" width="{width}" alt="{src}">'


def _text_phase(plan, outcomes: dict) -> str:
    """The film's prompt encodes: what each encoded, and how this run had it."""
    rows = []
    for st in plan.stages_of(None):
        if st.kind != "encode":
            continue
        o = outcomes.get(st.id)
        status = o.status if o else "?"
        secs = f"{o.seconds:.2f} s" if o and o.status == "rendered" else "-"
        p = st.params
        text = p.prompt if p.prompt is not None else f"({p.default})"
        cls = {"rendered": "rendered", "cached": "cached-t"}.get(status, status)
        rows.append(
            f"<tr><td class=mono>{esc(st.id)}</td><td>{esc(text)}</td>"
            f'<td class="{cls}">{esc(status)}</td><td class=num>{secs}</td></tr>'
        )
    if not rows:
        return ""
    return (
        '<section class="shot" id="text"><h2>text phase</h2><div class="dim">each distinct '
        "prompt encoded once, before any clip</div><table><tr><th>stage</th><th>prompt</th>"
        "<th>this run</th><th class=num>time</th></tr>" + "".join(rows) + "</table></section>"
    )


def render_report(plan, summary, out_dir: Path, sheets: dict[str, Path]) -> str:
    cost = estimate(plan)
    outcomes = {s.id: s for s in summary.stages}
    text, excerpts = spec_excerpts(plan)
    parts = []
    for shot in plan.shots:
        export = outcomes.get(f"{shot.id}/export")
        path = Path(shot.output_path) if shot.output_path else None
        ok = export is not None and export.status in ("rendered", "cached")
        media = (
            _media(path, out_dir, shot.format, shot.id, shot.width)
            if ok and path and path.is_file()
            else '<p class="failed">not rendered</p>'
        )
        sheet = sheets.get(shot.id)
        sheet_html = (
            f'<img class="sheet" src="{esc(_rel(sheet, out_dir))}" data-shot="{esc(shot.id)}" '
            f'alt="contact sheet of {esc(shot.id)}">'
            if sheet
            else ""
        )
        rows = []
        for st in plan.stages_of(shot.id):
            o = outcomes.get(st.id)
            status = o.status if o else "?"
            secs = f"{o.seconds:.2f} s" if o and o.status == "rendered" else "-"
            cls = {"rendered": "rendered", "cached": "cached-t"}.get(status, status)
            rows.append(
                f"<tr><td class=mono>{esc(st.id)}</td><td>{esc(st.kind)}</td>"
                f'<td class="{cls}">{esc(status)}</td><td class=num>{secs}</td>'
                f"<td class=num>{esc(format_seconds(cost.stages[st.id].gpu_seconds))}</td>"
                f"<td class=mono>{esc(st.key[:12])}</td></tr>"
            )
        clips = " + ".join(str(c.frames) for c in shot.clips)
        parts.append(
            f'<section class="shot" id="shot-{esc(shot.id)}"><h2 class="mono">{esc(shot.id)}</h2>'
            f'<div class="dim">{esc(shot.model)} · {esc(shot.pipeline)} · {shot.frames} frames '
            f"({shot.frames / shot.fps:.2f} s) · {shot.width}x{shot.height} @ {shot.fps:g} fps · "
            f"clips {esc(clips)}"
            + (f" · {esc(shot.transition)} {shot.overlap}" if len(shot.clips) > 1 else "")
            + f'</div><div class="media">{media}{sheet_html}</div>'
            "<table><tr><th>stage</th><th>kind</th><th>this run</th><th class=num>time</th>"
            "<th class=num>est. GPU</th><th>key</th></tr>"
            + "".join(rows)
            + "</table>"
            + (
                f"<details open><summary>spec</summary><pre>{esc(excerpts[shot.id])}</pre></details>"
                if shot.id in excerpts
                else ""
            )
            + "</section>"
        )
    film = ""
    join = outcomes.get("film/join")
    if plan.output and join is not None:
        o = Path(plan.output)
        shown = (
            _media(o, out_dir, o.suffix.lower().lstrip("."), "film", plan.shots[0].width)
            if join.status in ("rendered", "cached") and o.is_file()
            else '<p class="failed">not rendered</p>'
        )
        secs = f"{join.seconds:.2f} s" if join.status == "rendered" else "-"
        film = (
            f'<section class="shot" id="film"><h2>film</h2><div class="dim mono">'
            f"{esc(_rel(o, out_dir))} · film/join {esc(join.status)} {secs}</div>"
            f'<div class="media">{shown}</div></section>'
        )
    film = _text_phase(plan, outcomes) + film
    rendered = sum(s.status == "rendered" for s in summary.stages)
    cached = sum(s.status == "cached" for s in summary.stages)
    failed = sum(s.status == "failed" for s in summary.stages)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(plan.name)} — render report</title><style>{CSS}{STYLE}</style></head>
<body><header><h1>{esc(plan.name)} <span class="dim">render report</span></h1>
<div class="dim"><code>{esc(plan.file)}</code> · {len(plan.shots)} shots ·
{rendered} stages rendered, {cached} cached{f", {failed} failed" if failed else ""} ·
{summary.seconds:.1f} s wall, {summary.runtime_seconds:.1f} s in the model runtime ·
estimated GPU time of the whole film {esc(format_seconds(cost.gpu_seconds))}</div></header>
<main>{"".join(parts)}{film}
<details><summary>the whole spec</summary><pre>{esc(text)}</pre></details></main>
<pre id="measured" hidden></pre>
<script>{SCRIPT}</script></body></html>
"""


def write_report(plan, summary, out_dir: Path) -> Path:
    """Contact sheets and `<spec>.report.html` into `out_dir`, each written atomically."""
    from moldbatch.execute.store import ArtifactStore

    out_dir = Path(out_dir)
    store = ArtifactStore(Path(summary.workdir))
    sheets = {}
    try:
        from moldbatch.review.contact import write_contact_sheet
    except ImportError:  # a light install delivering a cached film: the report, no sheets
        write_contact_sheet = None
    for shot in plan.shots if write_contact_sheet else ():
        sheet = write_contact_sheet(plan, shot, store, out_dir / f"{shot.id}.contact.png")
        if sheet is not None:
            sheets[shot.id] = sheet
    path = out_dir / report_name(plan)
    atomic_write(path, render_report(plan, summary, out_dir, sheets))
    return path


def report_after_render(plan, summary, out: Path | None, workdir=None, quiet=False) -> Path | None:
    """The CLI's hook after a render: write the report; a failure here never fails a render."""
    from moldbatch.errors import display_path

    try:
        path = write_report(plan, summary, default_out_dir(plan, out))
    except Exception as e:  # noqa: BLE001 - the render itself succeeded
        print(f"moldbatch: could not write the render report: {e}", file=sys.stderr)
        return None
    if not quiet:
        print(f"✓ Report: {display_path(path)}", file=sys.stderr)
    return path
