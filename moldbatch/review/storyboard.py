"""`moldbatch plan FILE --html storyboard.html`: the film as a timeline on one page.

A row per shot on a common frame axis; a block per clip at its true frame range (clips
alternate between two lanes so that motion tails and fades show as overlaps); seams where the
stitch switches clips; first-frame and keyframe images at their frames; retake windows;
upscales under their clips; each stage's state (cached / will render) and estimated GPU time.
Hovering or clicking a clip shows its prompt, seed, frames and key.

The page draws itself from a JSON document in it, and writes what it drew (each clip's
measured frame range) into `#measured`, so a headless browser can check the page itself.
Light install only: no torch, no Pillow.
"""

from __future__ import annotations

import math
from pathlib import Path

from moldbatch.fsio import atomic_write
from moldbatch.models import held_frames, latent_frames, rendered_tail
from moldbatch.review.cost import PlanCost, estimate, format_seconds
from moldbatch.review.page import CSS, data_uri, esc, json_script


def _carry_note(shot, seams, index: int) -> str | None:
    """What a smooth seam carries into clip `index`: the previous clip's last frames, encoded
    again into whole latent frames and held, which the stitch drops (runtime/carry.py)."""
    if index == 0 or index - 1 >= len(seams) or seams[index - 1][0] != "smooth":
        return None
    tail = seams[index - 1][1]
    if not tail:
        return None
    rendered = rendered_tail(tail, bool(shot.temporal_upscale))
    latents = latent_frames(rendered)
    held = held_frames(rendered)
    note = (
        f"holds the previous clip's last {tail} frames"
        + (f" ({rendered} rendered)" if shot.temporal_upscale else "")
        + f", encoded again into {latents} latent frame{'s' * (latents > 1)}; the stitch "
        f"drops these {tail} frames"
    )
    if held != rendered:
        note += f" ({rendered - held} of them generated again: a tail that is not 8m+1)"
    return note


def _state(cached: dict[str, bool], stage_id: str) -> str:
    return "cached" if cached.get(stage_id) else "render"


def _tick_step(axis: int) -> int:
    raw = max(axis / 10, 1)
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)


def storyboard_doc(plan, cached: dict[str, bool], cost: PlanCost) -> dict:
    """Everything the page draws, in frames; positions are computed by the page's script."""
    images: dict[str, int] = {}

    def image(path: str | None) -> int | None:
        if path is None:
            return None
        return images.setdefault(path, len(images))

    stages = {s.id: s for s in plan.stages}
    shots = []
    axis = 1
    for shot in plan.shots:
        factor = 2 if shot.temporal_upscale else 1  # clips render half the frames
        seams = getattr(shot, "seams", None) or [[shot.transition, shot.overlap]] * (
            len(shot.clips) - 1
        )
        clips = []
        for c in shot.clips:
            sid = f"{shot.id}/clip-{c.index}"
            span = (c.frames - 1) * factor + 1
            up_id = f"{shot.id}/upscale-{c.index}"
            st = stages.get(sid)
            clip = {
                "stage": sid,
                "index": c.index,
                "prompt": c.prompt,
                "negative_prompt": getattr(c, "negative_prompt", None),
                "seed": c.seed,
                "frames": c.frames,
                "start": c.start,
                "end": c.start + span,
                "keep_from": c.keep_from,
                "key": st.key if st else "",
                "state": _state(cached, sid),
                "tokens": cost.stages[sid].tokens if sid in cost.stages else 0,
                "gpu": format_seconds(cost.stages[sid].gpu_seconds) if sid in cost.stages else "",
                "seam": seams[c.index - 1] if c.index > 0 and c.index - 1 < len(seams) else None,
                "carry": _carry_note(shot, seams, c.index),
                "images": [],
            }
            if c.image is not None:
                clip["images"].append({"frame": c.start, "img": image(c.image), "what": "image"})
            for k in c.keyframes:
                clip["images"].append(
                    {
                        "frame": c.start + k["frame"] * factor,
                        "img": image(k["image"]),
                        "what": "keyframe",
                    }
                )
            ups = [u for u in (f"{shot.id}/refine-{c.index}", up_id) if u in stages]
            if ups:
                # the clip's upscales as one bar: the second stage (x2 + refine), then the shot's upscale
                what = (
                    ["stage 2: x2 + refine"] if ups[0].split("/")[-1].startswith("refine") else []
                )
                what += [
                    f"{k} {v}"
                    for k, v in (
                        ("spatial", shot.spatial_upscale),
                        ("temporal", shot.temporal_upscale),
                    )
                    if v
                ]
                states = [_state(cached, u) for u in ups]
                clip["upscale"] = {
                    "stage": ups[-1],
                    "key": stages[ups[-1]].key,
                    "state": next((st for st in states if st != "cached"), states[-1]),
                    "what": ", ".join(what),
                    "gpu": format_seconds(sum(cost.stages[u].gpu_seconds for u in ups)),
                }
            clips.append(clip)
            axis = max(axis, clip["end"])
        axis = max(axis, shot.frames)
        retake = None
        rt = stages.get(f"{shot.id}/clip-0")
        if rt is not None and rt.params.retake is not None:
            w = rt.params.retake
            retake = {
                "start": round(w.start * shot.fps),
                "end": round(w.end * shot.fps),
                "label": f"retake {w.start:g}–{w.end:g} s",
            }
        shots.append(
            {
                "id": shot.id,
                "model": shot.model,
                "pipeline": shot.pipeline,
                "frames": shot.frames,
                "fps": shot.fps,
                "size": f"{shot.width}x{shot.height}",
                "render_size": f"{shot.render_width}x{shot.render_height}",
                "transition": shot.transition,
                "overlap": shot.overlap,
                "format": shot.format,
                "audio": shot.audio,
                "clips": clips,
                "retake": retake,
                "stages": [
                    {"stage": s.id, "kind": s.kind, "state": _state(cached, s.id)}
                    for s in plan.stages_of(shot.id)
                    if s.kind in ("stitch", "export")
                ],
            }
        )
    return {
        "name": plan.name,
        "file": plan.file,
        "axis": axis,
        "tick": _tick_step(axis),
        "shots": shots,
        "images": {str(i): p for p, i in images.items()},
        "gpu_total": format_seconds(cost.gpu_seconds),
        "gpu_todo": format_seconds(
            cost.seconds_for(s.id for s in plan.stages if not cached.get(s.id))
        ),
        "join": (
            {"stage": "film/join", "state": _state(cached, "film/join"), "path": plan.output}
            if "film/join" in stages
            else None
        ),
    }


def _image_css(images: dict[str, str]) -> str:
    rules = []
    for idx, path in images.items():
        uri = data_uri(path)
        if uri is not None:
            rules.append(f".img-{idx}{{background-image:url({uri})}}")
    return "\n".join(rules)


def _stage_table(plan, cached: dict[str, bool], cost: PlanCost) -> str:
    rows = []
    for st in plan.stages:
        c = cost.stages.get(st.id)
        state = _state(cached, st.id)
        rows.append(
            "<tr>"
            f"<td class=mono>{esc(st.id)}</td><td>{esc(st.kind)}</td>"
            f"<td class=mono>{esc(', '.join(st.needs) or '-')}</td>"
            f"<td class=mono>{esc(st.key[:12])}</td>"
            f"<td class=num>{c.frames if c else ''}</td><td class=num>{c.tokens if c else ''}</td>"
            f"<td class=num>{esc(format_seconds(c.gpu_seconds)) if c else ''}</td>"
            f'<td><span class="badge {state}">{"cached" if state == "cached" else "will render"}'
            "</span></td></tr>"
        )
    head = (
        "<tr><th>stage</th><th>kind</th><th>needs</th><th>key</th><th class=num>frames</th>"
        "<th class=num>latent tokens</th><th class=num>est. GPU</th><th>state</th></tr>"
    )
    return f"<table id=stages>{head}{''.join(rows)}</table>"


STYLE = """
.board { margin-top:8px; }
.row { display:flex; border-bottom:1px solid var(--line); padding:8px 0; }
.label { width:210px; flex:none; padding-right:12px; }
.label .meta { font-size:12px; color:var(--dim); }
.track { position:relative; flex:1; height:132px; }
.axis { position:relative; flex:1; height:20px; }
.tick { position:absolute; top:0; height:100%; border-left:1px solid var(--line); font-size:11px;
  color:var(--dim); padding-left:3px; }
.gridline { position:absolute; top:0; bottom:0; border-left:1px dashed #222831; }
.extent { position:absolute; top:46px; height:82px; background:#161b22; border-radius:4px; }
.trim { position:absolute; top:46px; height:82px; background:repeating-linear-gradient(135deg,
  #2a1f22 0 4px, transparent 4px 8px); }
.clip { position:absolute; height:28px; border-radius:4px; padding:4px 6px; font-size:12px;
  color:#111; overflow:hidden; white-space:nowrap; cursor:pointer; border:1px solid #0006; }
.clip.cached { background:var(--cached); } .clip.render { background:var(--render); }
.clip:hover, .clip.sel { outline:2px solid #fff; z-index:5; }
.lane0 { top:50px; } .lane1 { top:82px; }
.overlap { position:absolute; top:48px; height:64px; background:repeating-linear-gradient(45deg,
  #7b8cff55 0 4px, transparent 4px 8px); border:1px solid var(--overlap); border-radius:3px;
  z-index:3; pointer-events:none; }
.seam { position:absolute; top:40px; height:78px; border-left:2px solid var(--seam); z-index:4;
  pointer-events:none; }
.seam span { position:absolute; top:-14px; left:2px; font-size:10px; color:var(--seam);
  white-space:nowrap; }
.up { position:absolute; top:116px; height:12px; border-radius:3px; font-size:9px; line-height:12px;
  padding:0 4px; color:#111; overflow:hidden; white-space:nowrap; }
.up.cached { background:var(--cached); } .up.render { background:var(--render); }
.thumb { position:absolute; top:0; width:52px; height:36px; transform:translateX(-50%);
  background-size:cover; background-position:center; border:1px solid #fff8; border-radius:3px; }
.thumb::after { content:""; position:absolute; left:50%; top:36px; height:12px;
  border-left:1px solid #fff8; }
.thumb.keyframe { border-color:#ffd34d; } .thumb.keyframe::after { border-color:#ffd34d; }
.retake { position:absolute; top:44px; height:86px; background:#c45bd633;
  border:1px dashed var(--retake); z-index:4; font-size:10px; color:#f0b6fa; padding:1px 3px;
  display:flex; align-items:flex-end; pointer-events:none; }
.thumb.first { transform:none; } .thumb.first::after { left:0; }
.thumb.last { transform:translateX(-100%); } .thumb.last::after { left:auto; right:0; }
.stbadge { font-size:11px; margin-top:4px; }
#details { position:sticky; bottom:0; z-index:20; background:var(--panel); border-top:2px solid var(--line);
  padding:10px 24px; min-height:72px; }
#details .prompt { font-size:15px; }
.film { padding:10px 0; }
"""

SCRIPT = """
(function () {
  const doc = JSON.parse(document.getElementById('film-data').textContent);
  const pct = f => (100 * f / doc.axis) + '%';
  const el = (tag, cls, parent, text) => { const e = document.createElement(tag);
    if (cls) e.className = cls; if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e); return e; };
  const board = document.getElementById('board');
  const axisRow = el('div', 'row', board); el('div', 'label dim', axisRow, 'frame');
  const axis = el('div', 'axis', axisRow);
  for (let f = 0; f <= doc.axis; f += doc.tick) {
    const t = el('div', 'tick', axis, String(f)); t.style.left = pct(f); }
  const details = document.getElementById('details');
  let pinned = null;
  function show(info) {
    details.innerHTML = '';
    const h = el('div', '', details);
    el('b', 'mono', h, info.stage);
    el('span', 'badge ' + info.state, h, info.state === 'cached' ? 'cached' : 'will render');
    el('div', 'prompt', details, info.prompt);
    if (info.negative_prompt) el('div', 'dim', details, 'negative: ' + info.negative_prompt);
    el('div', 'mono dim', details, 'seed ' + info.seed + ' · ' + info.frames +
      ' frames rendered · shot frames ' + info.start + '–' + (info.end - 1) +
      ' (kept from ' + info.keep_from + ') · ' + info.tokens + ' latent tokens · est. GPU ' +
      info.gpu);
    el('div', 'mono dim', details, 'key ' + info.key);
    if (info.upscale) el('div', 'mono dim', details, info.upscale.stage + ' (' +
      info.upscale.what + '): ' + info.upscale.state + ' · key ' + info.upscale.key);
  }
  for (const shot of doc.shots) {
    const row = el('div', 'row shot', board); row.dataset.shot = shot.id;
    const label = el('div', 'label', row);
    el('b', 'mono', label, shot.id);
    el('div', 'meta', label, shot.model + ' · ' + shot.pipeline);
    el('div', 'meta', label, shot.frames + ' frames · ' + (shot.frames / shot.fps).toFixed(2) +
      ' s · ' + shot.size + ' @ ' + shot.fps);
    if (shot.clips.length > 1) el('div', 'meta', label, shot.clips.length + ' clips · ' +
      shot.transition + (shot.overlap ? ' ' + shot.overlap : ''));
    const sb = el('div', 'stbadge', label);
    for (const s of shot.stages) { const b = el('span', 'badge ' + s.state, sb, s.kind);
      b.title = s.stage + ': ' + (s.state === 'cached' ? 'cached' : 'will render'); }
    const track = el('div', 'track', row); track.dataset.shot = shot.id;
    for (let f = 0; f <= doc.axis; f += doc.tick) el('div', 'gridline', track).style.left = pct(f);
    const ext = el('div', 'extent', track); ext.style.left = '0'; ext.style.width = pct(shot.frames);
    const last = shot.clips[shot.clips.length - 1];
    if (last.end > shot.frames) { const t = el('div', 'trim', track);
      t.style.left = pct(shot.frames); t.style.width = pct(last.end - shot.frames);
      t.title = 'rendered, trimmed to ' + shot.frames + ' frames'; }
    if (shot.retake) { const r = el('div', 'retake', track, shot.retake.label);
      r.style.left = pct(shot.retake.start); r.style.width = pct(shot.retake.end - shot.retake.start); }
    for (const c of shot.clips) {
      const b = el('div', 'clip lane' + (c.index % 2) + ' ' + c.state, track,
        'clip ' + c.index + ' · ' + c.frames + 'f');
      b.style.left = pct(c.start); b.style.width = pct(c.end - c.start);
      b.dataset.stage = c.stage; b.dataset.start = c.start; b.dataset.end = c.end;
      b.title = c.stage + '\\n' + c.prompt + '\\nseed ' + c.seed + ' · ' + c.frames +
        ' frames · shot frames ' + c.start + '–' + (c.end - 1) + '\\nkey ' + c.key;
      b.addEventListener('mouseenter', () => { if (!pinned) show(c); });
      b.addEventListener('click', () => { if (pinned) pinned.classList.remove('sel');
        pinned = (pinned === b) ? null : b; if (pinned) b.classList.add('sel'); show(c); });
      if (c.index > 0 && c.start < c.keep_from) { const o = el('div', 'overlap', track);
        o.style.left = pct(c.start); o.style.width = pct(c.keep_from - c.start);
        o.title = (c.seam ? c.seam[0] : '') + ' overlap: frames ' + c.start + '–' +
          (c.keep_from - 1) + (c.carry ? '\\n' + c.carry : ''); }
      if (c.index > 0) { const s = el('div', 'seam', track); s.style.left = pct(c.keep_from);
        if (c.carry) s.title = c.carry;
        el('span', '', s, (c.seam ? c.seam[0] : 'seam') + ' @' + c.keep_from); }
      if (c.upscale) { const u = el('div', 'up ' + c.upscale.state, track,
        c.upscale.what); u.style.left = pct(c.start); u.style.width = pct(c.end - c.start);
        u.dataset.stage = c.upscale.stage; u.title = c.upscale.stage + ': ' + c.upscale.what; }
      for (const im of c.images) { const edge = im.frame === 0 ? ' first' :
          (im.frame >= doc.axis - 1 ? ' last' : '');
        const t = el('div', 'thumb img-' + im.img + ' ' + im.what + edge, track);
        t.style.left = pct(im.frame); t.title = im.what + ' at frame ' + im.frame + ': ' +
          doc.images[im.img]; t.dataset.frame = im.frame; }
    }
  }
  // #stage=<shot>/clip-<i> selects a clip on load, as a click would
  const want = decodeURIComponent((location.hash.match(/^#stage=(.+)$/) || [])[1] || '');
  const chosen = want && [...document.querySelectorAll('.clip')].find(b => b.dataset.stage === want);
  if (chosen) chosen.click();
  else if (doc.shots.length && doc.shots[0].clips.length) show(doc.shots[0].clips[0]);
  // what was drawn, measured back into frames, for tests and tools
  const out = { axis: doc.axis, clips: [], shots: [] };
  for (const tr of document.querySelectorAll('.track')) {
    const r = tr.getBoundingClientRect();
    out.shots.push({ shot: tr.dataset.shot, width: r.width });
    for (const b of tr.querySelectorAll('.clip, .up, .thumb')) {
      const q = b.getBoundingClientRect();
      const item = { shot: tr.dataset.shot, kind: b.classList[0], stage: b.dataset.stage || null,
        visible: q.width > 0 && q.height > 0 };
      if (b.classList.contains('thumb')) {
        item.frame = +b.dataset.frame;
        const x = b.classList.contains('first') ? q.left :
          (b.classList.contains('last') ? q.right : q.left + q.width / 2);
        item.at = (x - r.left) / r.width * doc.axis;
        item.image = getComputedStyle(b).backgroundImage.startsWith('url(');
      } else {
        item.start = (q.left - r.left) / r.width * doc.axis;
        item.end = (q.right - r.left) / r.width * doc.axis;
      }
      out.clips.push(item);
    }
  }
  document.getElementById('measured').textContent = JSON.stringify(out);
  document.body.dataset.ready = '1';
})();
"""


def render_storyboard(plan, cached: dict[str, bool], cost: PlanCost | None = None) -> str:
    """The storyboard page of a valid plan, as one HTML string."""
    cost = cost or estimate(plan)
    doc = storyboard_doc(plan, cached, cost)
    todo = sum(not cached.get(s.id) for s in plan.stages)
    join = doc["join"]
    film = ""
    if join:
        label = "cached" if join["state"] == "cached" else "will render"
        film = (
            f'<div class="film">film/join → <code>{esc(join["path"])}</code> '
            f'<span class="badge {join["state"]}">{label}</span></div>'
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(plan.name)} — storyboard</title>
<style>{CSS}{STYLE}
{_image_css(doc["images"])}</style></head>
<body>
<header><h1>{esc(plan.name)} <span class="dim">storyboard</span></h1>
<div class="dim"><code>{esc(plan.file)}</code> · {len(plan.shots)} shots ·
{sum(len(s.clips) for s in plan.shots)} clips · {sum(s.frames for s in plan.shots)} frames ·
{todo} of {len(plan.stages)} stages will render · est. GPU {esc(doc["gpu_todo"])} to render
({esc(doc["gpu_total"])} for everything)</div>
<div class="legend dim" style="margin-top:6px">
<span><i class="sw cached"></i>cached</span><span><i class="sw render"></i>will render</span>
<span><i class="sw" style="background:var(--overlap)"></i>overlap (motion tail / fade)</span>
<span><i class="sw" style="background:var(--seam)"></i>seam</span>
<span><i class="sw" style="background:var(--retake)"></i>retake window</span>
<span><i class="sw" style="border:1px solid #ffd34d"></i>keyframe</span></div>
</header>
<main><div id="board" class="board"></div>{film}
<h2 style="margin-top:18px">stages</h2>{_stage_table(plan, cached, cost)}
<p class="dim">GPU times are estimates (latent tokens × steps × the model's seconds per
token-step; see <code>moldbatch/review/cost.py</code>).</p></main>
<div id="details" class="dim">Hover or click a clip.</div>
<pre id="measured" hidden></pre>
{json_script("film-data", doc)}
<script>{SCRIPT}</script>
</body></html>
"""


def write_storyboard(plan, path: Path, cached: dict[str, bool]) -> Path:
    atomic_write(Path(path), render_storyboard(plan, cached))
    return Path(path)
