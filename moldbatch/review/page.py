"""What the storyboard and the report pages share: escaping, embedded images, the style sheet,
and writing a file atomically. Pages are self-contained: styles and scripts inline, images as
data URIs of their original bytes, nothing fetched from the network."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

MIME = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg"}


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def data_uri(path: str | Path) -> str | None:
    """A PNG or JPEG file as a data: URI of its own bytes (no decoding, no Pillow)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    mime = next((m for magic, m in MIME.items() if data.startswith(magic)), None)
    if mime is None:
        return None
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def json_script(element_id: str, doc) -> str:
    """JSON for the page's script, safe inside <script>: `<`, `>` and `&` as \\u escapes (no
    `</script>`, `<!--` or `-->` can form), and the line separators JavaScript once choked on."""
    text = json.dumps(doc, ensure_ascii=False)
    for ch in "<>&\u2028\u2029":
        text = text.replace(ch, f"\\u{ord(ch):04x}")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


CSS = """
:root { --bg:#111418; --panel:#1b2027; --line:#2c333d; --text:#e6e9ee; --dim:#8d96a3;
  --cached:#2f9e6e; --render:#d9962b; --seam:#e0525a; --overlap:#7b8cff; --retake:#c45bd6; }
* { box-sizing:border-box; }
body { margin:0; font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif; background:var(--bg);
  color:var(--text); }
header { padding:16px 24px 8px; border-bottom:1px solid var(--line); }
h1 { font-size:20px; margin:0 0 4px; } h2 { font-size:16px; margin:0; }
.dim { color:var(--dim); } code, .mono { font-family:ui-monospace,Menlo,Consolas,monospace; }
main { padding:12px 24px 24px; }
.legend span { display:inline-flex; align-items:center; gap:4px; margin-right:14px; }
.sw { width:12px; height:12px; border-radius:2px; display:inline-block; }
.cached { background:var(--cached); } .render { background:var(--render); }
.badge { display:inline-block; padding:1px 7px; border-radius:9px; font-size:12px; color:#111;
  margin-left:4px; }
table { border-collapse:collapse; } td, th { padding:3px 10px; border-bottom:1px solid var(--line);
  text-align:left; } th { color:var(--dim); font-weight:600; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
pre { background:var(--panel); padding:10px; border-radius:6px; overflow:auto; }
"""
