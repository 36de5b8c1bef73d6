"""Optional captioner: plug a vision-language model into ``spritegen metadata``.

The seeds asked an LLM with vision for each sprite's prompts and attributes. spritegen needs no model
(prompts are built from the measured and known attributes), but a user can add one::

    # params.yaml
    metadata:
      captioner: my_package.captioning:MyCaptioner

``MyCaptioner()`` is built once with no arguments and called once per sprite::

    class MyCaptioner:
        def caption(self, image: PIL.Image.Image, context: dict) -> dict:
            # image: the sprite composited on white; context: name, types, colours... already known
            return {"prompts": ["a small yellow mouse with red cheeks"], "body_shape": "quadruped"}

Its output is validated against ``CAPTION_SCHEMA``: a reply that does not fit (an unknown key, a type or
colour outside the vocabularies, an empty prompt) is rejected for that sprite, counted in the ingest
report, and the built-in prompts are used alone. Valid prompts are added to the sprite's prompts; the
other fields are kept in ``SpriteRecord.extra["captioner"]``. Colours stay measured from the pixels.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from spritegen.data.vocab import COLOUR_NAMES, SIZE_CLASSES, TYPES
from spritegen.errors import UserError


@runtime_checkable
class Captioner(Protocol):
    def caption(self, image: Image.Image, context: dict) -> dict: ...


class CaptionError(ValueError):
    """A captioner's reply does not fit the schema; the message names the field."""


# field -> (kind, allowed values or None). Every field is optional; unknown fields are errors, so a
# model that drifts from the schema is noticed instead of silently ignored.
CAPTION_SCHEMA: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "prompts": ("list[str]", None),
    "description": ("str", None),
    "primary_colour": ("str", COLOUR_NAMES),
    "secondary_colour": ("str", COLOUR_NAMES),
    "types": ("list[str]", TYPES),
    "size_class": ("str", SIZE_CLASSES),
    "body_shape": ("str", None),
    "habitat": ("str", None),
    "legendary": ("bool", None),
    "mythical": ("bool", None),
}
MAX_PROMPT_CHARS = 400
MAX_PROMPTS = 20


def validate_caption(data: Any) -> dict:
    """Check a captioner's reply against ``CAPTION_SCHEMA``; returns a normalised copy.

    Strings are stripped; names (colours, types, size) are lower-cased before checking, since models
    write "Yellow" as often as "yellow".
    """
    if not isinstance(data, dict):
        raise CaptionError(f"expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(CAPTION_SCHEMA))
    if unknown:
        raise CaptionError(f"unknown field(s) {unknown}; known: {sorted(CAPTION_SCHEMA)}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        kind, allowed = CAPTION_SCHEMA[key]
        if value is None:
            continue
        if kind == "bool":
            if not isinstance(value, bool):
                raise CaptionError(f"{key}: expected true/false, got {value!r}")
            out[key] = value
        elif kind == "str":
            if not isinstance(value, str) or not value.strip():
                raise CaptionError(f"{key}: expected a non-empty string, got {value!r}")
            value = value.strip()
            if allowed is not None:
                value = value.lower()
                if value not in allowed:
                    raise CaptionError(f"{key}: {value!r} is not one of {list(allowed)}")
            out[key] = value
        else:  # list[str]
            if not isinstance(value, (list, tuple)) or not value:
                raise CaptionError(f"{key}: expected a non-empty list of strings, got {value!r}")
            items = []
            for i, item in enumerate(value):
                if not isinstance(item, str) or not item.strip():
                    raise CaptionError(f"{key}[{i}]: expected a non-empty string, got {item!r}")
                item = " ".join(item.split())
                if allowed is not None:
                    item = item.lower()
                    if item not in allowed:
                        raise CaptionError(f"{key}[{i}]: {item!r} is not one of {list(allowed)}")
                elif len(item) > MAX_PROMPT_CHARS:
                    raise CaptionError(f"{key}[{i}]: longer than {MAX_PROMPT_CHARS} characters")
                items.append(item)
            if key == "types" and len(items) > 2:
                raise CaptionError(f"types: at most 2, got {items}")
            if key == "prompts" and len(items) > MAX_PROMPTS:
                raise CaptionError(f"prompts: at most {MAX_PROMPTS}, got {len(items)}")
            out[key] = list(dict.fromkeys(items))
    return out


def load_captioner(spec: str) -> Captioner:
    """Build the captioner named ``"module:Class"``; any failure is a UserError naming the spec."""
    if ":" not in spec:
        raise UserError(f"metadata.captioner {spec!r}: expected 'module:Class'")
    module_name, cls_name = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - the user's module may fail in any way; report it by name
        raise UserError(f"metadata.captioner {spec!r}: cannot import {module_name!r}: {e}") from None
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise UserError(f"metadata.captioner {spec!r}: {module_name!r} has no attribute {cls_name!r}")
    try:
        captioner = cls()
    except Exception as e:  # noqa: BLE001
        raise UserError(f"metadata.captioner {spec!r}: {cls_name}() failed: {e}") from None
    if not callable(getattr(captioner, "caption", None)):
        raise UserError(f"metadata.captioner {spec!r}: {cls_name} has no caption(image, context) method")
    return captioner
