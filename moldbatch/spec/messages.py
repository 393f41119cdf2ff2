"""Turning pydantic's validation errors into messages that say what would be right."""

from __future__ import annotations

import difflib

from moldbatch.models import CAMERA_PRESETS
from moldbatch.spec.source import Source, format_path


def nearest(word: str, choices, n: int = 1) -> list[str]:
    return difflib.get_close_matches(str(word), [str(c) for c in choices], n=n, cutoff=0.5)


def did_you_mean(word: str, choices) -> str:
    close = nearest(word, choices)
    return f"; did you mean '{close[0]}'?" if close else ""


# the names users bring from other tools -> (moldbatch's name, the tool); said when a spec
# uses one where moldbatch's name is a key
FOREIGN = {
    # mold's chain scripts (mold.chain.v1)
    "source_image_path": ("image", "mold"),
    "source_image": ("image", "mold"),
    "strength": ("image_strength", "mold"),
    "motion_tail_frames": ("motion_tail", "mold"),
    "output_format": ("format", "mold"),
    "enable_audio": ("audio", "mold"),
    # ComfyUI's LTX-Video nodes
    "length": ("frames", "ComfyUI"),
    "frame_rate": ("fps", "ComfyUI"),
    "cfg": ("guidance", "ComfyUI"),
    "noise_seed": ("seed", "ComfyUI"),
    "positive": ("prompt", "ComfyUI"),
    "negative": ("negative_prompt", "ComfyUI"),
    "denoise": ("image_strength", "ComfyUI"),
    # diffusers' pipelines
    "num_frames": ("frames", "diffusers"),
    "num_inference_steps": ("steps", "diffusers"),
    "guidance_scale": ("guidance", "diffusers"),
}
_DENOISE = (
    "; moldbatch always denoises fully (ComfyUI's `denoise`): to hold a start image more or "
    "less firmly use 'image_strength', to re-render part of a video use 'retake'"
)


def unknown_key(field: str, parent_fields: list[str], placed_elsewhere: str = "") -> str:
    """The message for a key that is not allowed here: another tool's name for one of ours,
    a key of a shot written where it does not belong (indentation), or the nearest name."""
    msg = f"unknown key '{field}'"
    ours, tool = FOREIGN.get(field, (None, None))
    if ours in parent_fields:
        if field == "denoise":
            return msg + _DENOISE
        return msg + f"; did you mean '{ours}'? ({tool}'s `{field}` is moldbatch's `{ours}`)"
    if placed_elsewhere:
        return msg + placed_elsewhere
    msg += did_you_mean(field, parent_fields)
    if not nearest(field, parent_fields) and parent_fields:
        msg += f"; known keys: {', '.join(parent_fields)}"
    return msg


def _placed_elsewhere(loc: tuple, field: str) -> str:
    """A hint when a key is one of a shot's, written at the film's level (an indentation
    slip): `frames:` under `shots:` one level too far left."""
    from moldbatch.spec.schema import SETTING_FIELDS, SHOT_FIELDS

    if len(loc) == 1 and field in SHOT_FIELDS:
        where = "a shot or of `defaults`" if field in SETTING_FIELDS else "a shot"
        return (
            f"; '{field}' is a key of {where}, not of the film: check the indentation (a "
            "shot's keys line up under its first key, one level deeper than `- `)"
        )
    if len(loc) == 2 and loc[0] == "defaults" and field in ("id", "clips"):
        return f"; '{field}' is a key of a shot only, not of `defaults`"
    return ""


def _show(value) -> str:
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nothing"
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    if isinstance(value, int) and not -(10**30) < value < 10**30:
        return "a number of more than 30 digits"
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def pydantic_diagnostics(src: Source, base: tuple, exc, known_fields) -> list:
    """One Diagnostic per pydantic error, located in `src` under the path prefix `base`."""
    out = []
    for err in exc.errors(include_url=False):
        loc = base + tuple(err["loc"])
        kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
        field = str(loc[-1]) if loc else ""
        at_key = False
        if kind == "extra_forbidden":
            parent_fields = known_fields(loc[:-1])
            elsewhere = _placed_elsewhere(loc, field) if "shots" in parent_fields else ""
            msg = unknown_key(field, parent_fields, elsewhere)
            at_key = True
        elif kind == "missing":
            msg = f"missing required key '{field}'"
            loc = loc[:-1]
        elif kind == "literal_error":
            msg = _literal(field, value, ctx)
        elif kind == "string_pattern_mismatch" and field == "id":
            safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in str(value).lower())
            msg = (
                f"shot id {_show(value)} is not safe as a file name: use lower-case letters, "
                f"digits, '-' and '_', starting with a letter or digit (e.g. '{safe.strip('-_') or 'shot-1'}')"
            )
        elif kind == "string_too_long":
            msg = _too_long(field, value, ctx["max_length"])
        elif kind in ("int_type", "int_parsing", "int_from_float"):
            msg = f"must be a whole number, got {_show(value)}"
        elif kind in ("float_type", "float_parsing"):
            msg = f"must be a number, got {_show(value)}"
        elif kind in ("string_type",):
            msg = f"must be text, got {_show(value)} (quote it)"
        elif kind in ("bool_type", "bool_parsing"):
            msg = f"must be true or false, got {_show(value)}"
        elif kind in ("model_type", "dict_type", "model_attributes_type"):
            msg = f"must be a mapping of keys to values, got {_show(value)}"
        elif kind == "list_type":
            msg = f"must be a list, got {_show(value)}"
        elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
            op = {
                "greater_than_equal": ">=",
                "greater_than": ">",
                "less_than_equal": "<=",
                "less_than": "<",
            }[kind]
            bound = next(iter(ctx.values()))
            msg = f"must be {op} {bound}, got {_show(value)}"
        elif kind == "too_short":
            msg = "must not be empty" if field != "shots" else "a film needs at least one shot"
        elif kind == "value_error":
            msg = str(ctx.get("error", err["msg"]))
        elif kind in ("finite_number",):
            msg = f"must be a finite number, got {_show(value)}"
        else:
            msg = err["msg"][:1].lower() + err["msg"][1:]
        out.append(src.diag(loc, msg, key=at_key))
    return out


def _too_long(field: str, value: str, most: int) -> str:
    if field == "id":
        return (
            f"shot id is {len(value)} characters, at most {most}: it names the shot's "
            "files, which every filesystem must take; shorten it"
        )
    return (
        f"is {len(value):,} characters, at most {most:,}: the text encoder reads at most its "
        "sequence length of tokens of a prompt (1024 tokens on the real models) and drops the "
        "rest; shorten it"
    )


def _literal(field: str, value, ctx) -> str:
    if field == "camera_control":
        return (
            f"unknown camera preset {_show(value)}"
            + did_you_mean(value, CAMERA_PRESETS)
            + (f" (presets: {', '.join(CAMERA_PRESETS)})")
        )
    if field == "version":
        return f"unsupported spec version {_show(value)}: this moldbatch reads version 1"
    expected = ctx.get("expected", "").replace("'", "").replace(" or ", ", ")
    return f"must be one of {expected}, got {_show(value)}" + did_you_mean(
        value, [x.strip() for x in expected.split(",")]
    )


__all__ = ["pydantic_diagnostics", "nearest", "did_you_mean", "format_path"]
