"""The categorical attributes the conditional families condition on (seed 004's ``CategoryEmbedder``;
the cvae and the gan read them).

Every attribute is a small vocabulary whose index 0 is "unknown": an attribute that is unknown for a
sprite (or not named by a prompt) is "unknown", never guessed. Ids come from three places:

* training: :func:`record_attributes` / :func:`attribute_matrix` read a sprite's record, plus its
  body shape measured from the silhouette by :func:`measure_shapes`;
* generation: :func:`parse_prompt` reads the prompt with fixed word rules (an optional LLM hook only
  fills what the rules left unknown);
* balanced sampling: :func:`balanced_weights` draws rare Type1 x PrimaryColour (x Shape) groups more often,
  the seed's balanced data set without copying sprites.

    from spritegen.attributes import parse_prompt, describe
    describe(parse_prompt("a small legendary ice pokemon from gen 4"))
"""

from __future__ import annotations

import re
import unicodedata
import warnings
from collections.abc import Sequence

import torch

from spritegen.data.dataset import SpriteRecord
from spritegen.data.metadata import size_class as size_from_measurements
from spritegen.data.vocab import COLOUR_NAMES, MAX_GENERATION, SIZE_CLASSES, TYPES
from spritegen.errors import UserError

UNKNOWN = 0  # the id of "unknown" in every vocabulary

# Body shapes measured from the silhouette's bounding box (see measure_shapes): tall and wide by its
# height/width ratio, round (compact, chubby) and sparse (spiky, limbs spread out) by how much of the
# box the body fills.
SHAPES = ("tall", "wide", "round", "sparse")

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "type1": ("unknown", *TYPES),
    "type2": ("unknown", "none", *TYPES),  # "none": known to be single-typed
    "primary_colour": ("unknown", *COLOUR_NAMES),
    "secondary_colour": ("unknown", *COLOUR_NAMES),
    "size_class": ("unknown", *SIZE_CLASSES),
    "generation": ("unknown", *(str(g) for g in range(1, MAX_GENERATION + 1))),
    "shape": ("unknown", *SHAPES),
    "legendary": ("unknown", "ordinary", "legendary", "mythical"),
    "evolution_stage": ("unknown", "basic", "stage1", "stage2"),  # the trading-card terms
}

_COLUMN = {name: i for i, name in enumerate(ATTRIBUTES)}


def _id(attribute: str, name: str) -> int:
    """Index of ``name`` in the attribute's vocabulary; ValueError naming both when it is not there."""
    vocab = ATTRIBUTES[attribute]
    if name not in vocab:
        raise ValueError(f"{attribute}: {name!r} is not one of {vocab}")
    return vocab.index(name)


def describe(ids: dict[str, int]) -> dict[str, str]:
    """Attribute ids -> names, for logs and the API: ``{"type1": 2}`` -> ``{"type1": "fire"}``."""
    names = {}
    for attribute, i in ids.items():
        if attribute not in ATTRIBUTES:
            raise ValueError(f"unknown attribute {attribute!r}; attributes are {tuple(ATTRIBUTES)}")
        vocab = ATTRIBUTES[attribute]
        if not 0 <= int(i) < len(vocab):
            raise ValueError(f"{attribute}: id {i} is outside 0..{len(vocab) - 1}")
        names[attribute] = vocab[int(i)]
    return names


# --- from a record (training) ------------------------------------------------------------------------


def _source_legendary(extra: dict) -> str:
    """ "legendary" status a source provides: a vocabulary name, or the seed's two booleans
    (``legendary``, ``mythical``); anything else stays unknown."""
    value = extra.get("legendary")
    if isinstance(value, str) and value.lower() in ATTRIBUTES["legendary"]:
        return value.lower()
    if extra.get("mythical") is True:
        return "mythical"
    if value is True:
        return "legendary"
    if value is False and extra.get("mythical") is False:  # both known false: an ordinary Pokémon
        return "ordinary"
    return "unknown"


def _source_evolution_stage(extra: dict) -> str:
    """Evolution stage a source provides as one of the vocabulary's names; anything else stays unknown
    (a number is not accepted: sources disagree on whether stage 1 is the basic form)."""
    value = extra.get("evolution_stage")
    if isinstance(value, str) and value.lower() in ATTRIBUTES["evolution_stage"]:
        return value.lower()
    return "unknown"


def record_attributes(record: SpriteRecord, shape: str | None) -> dict[str, int]:
    """Attribute ids of one sprite, in ``ATTRIBUTES`` order.

    ``shape`` is the class :func:`measure_shapes` gave its image (None: unknown). The metadata stage stores
    stand-ins ("normal" type, "medium" size) when the source had no type or no height/weight, flagged in
    ``extra``; they become "unknown" here so the model never learns the stand-in as a fact.
    """
    extra = record.extra or {}
    names = dict.fromkeys(ATTRIBUTES, "unknown")
    if record.types and extra.get("types_known") is not False:
        names["type1"] = record.types[0]
        names["type2"] = record.types[1] if len(record.types) > 1 else "none"
    names["primary_colour"] = record.primary_colour
    names["secondary_colour"] = record.secondary_colour
    if extra.get("size_known") is not False:
        names["size_class"] = record.size_class
    if record.generation is not None and 1 <= record.generation <= MAX_GENERATION:
        names["generation"] = str(record.generation)
    if shape is not None:
        names["shape"] = shape
    names["legendary"] = _source_legendary(extra)
    names["evolution_stage"] = _source_evolution_stage(extra)
    try:
        return {attribute: _id(attribute, name) for attribute, name in names.items()}
    except ValueError as e:
        raise ValueError(f"sprite {record.id}: {e}") from None


def attribute_matrix(records: Sequence[SpriteRecord], shapes: Sequence[str | None] | None) -> torch.Tensor:
    """(N, len(ATTRIBUTES)) int64 ids of the records, columns in ``ATTRIBUTES`` order.
    ``shapes``: one class per record (from :func:`measure_shapes`), or None for all unknown."""
    if shapes is None:
        shapes = [None] * len(records)
    if len(shapes) != len(records):
        raise ValueError(f"{len(records)} records but {len(shapes)} shapes")
    rows = [list(record_attributes(r, s).values()) for r, s in zip(records, shapes)]
    return torch.tensor(rows, dtype=torch.long).reshape(len(rows), len(ATTRIBUTES))  # (N, A)


# --- from a prompt (generation) ------------------------------------------------------------------------

# Words -> vocabulary names. Synonyms follow how spritegen.data.colour names measured pixels, so that a
# prompt's word lands where the training sprites with that look were labelled.
_COLOUR_WORDS = {
    **{c: c for c in COLOUR_NAMES},
    "grey": "gray",
    "silver": "gray",
    "violet": "purple",
    "gold": "yellow",
    "golden": "yellow",
    # The colour namer folds bright orange into red and dark or dull orange into brown (the Pokédex does
    # the same: Charizard is "red"), so the sprites a user calls orange are mostly labelled red.
    "orange": "red",
}
_SIZE_WORDS = {
    **{s: s for s in SIZE_CLASSES},
    "little": "small",
    "big": "large",
    "giant": "huge",
    "enormous": "huge",
    "gigantic": "huge",
    "massive": "huge",
}
_SHAPE_WORDS = {
    **{s: s for s in SHAPES},
    "upright": "tall",
    "slender": "tall",
    "lanky": "tall",
    "skinny": "tall",
    # "long" is read as a long body (a serpent, a lying quadruped), which is wide in a side-on sprite;
    # "a long tail" is misread, a known limit of word rules.
    "long": "wide",
    "flat": "wide",
    "elongated": "wide",
    "chubby": "round",
    "plump": "round",
    "stout": "round",
    "compact": "round",
    "spherical": "round",
    "spiky": "sparse",
    "spindly": "sparse",
    "wiry": "sparse",
}
_MOSTLY = {"mostly", "mainly", "predominantly", "primarily", "largely", "chiefly"}
_NEGATIONS = {"not", "non", "no"}
_EVOLUTION_WORDS = {"basic": "basic", "unevolved": "basic", "baby": "basic"}  # baby Pokémon are basic forms
# "first stage", "final form", "fully evolved" are left unknown on purpose: "first stage" means the basic
# form to some and stage 1 to others, and a final form is stage 1 or stage 2 depending on the line.

_ROMAN = {"i": 1, "ii": 2, "iii": 3, "iv": 4, "v": 5, "vi": 6, "vii": 7, "viii": 8, "ix": 9}
_NUMBER_WORDS = {"1": 1, "one": 1, "i": 1, "2": 2, "two": 2, "ii": 2}

_T = "(" + "|".join(TYPES) + ")"
_JOIN = r"(?:\s*(?:and|/|&|,|-)\s*|\s+)"
# An explicit type phrase: "fire type", "fire-type", "fire and flying type", "fire/flying types",
# "type: fire", "types fire and flying".
_TYPE_PHRASE = re.compile(
    rf"\b{_T}(?:{_JOIN}{_T})?[\s-]*types?\b|\btypes?\s*[:=]?\s*{_T}\b(?:{_JOIN}{_T}\b)?"
)
# Everything from "ability"/"abilities" to the end of the sentence is an ability list ("Abilities:
# flash fire, water absorb."): its words name moves, not the sprite's look.
_ABILITIES = re.compile(r"\babilit(?:y|ies)\b[^.;!?\n]*")
_NUMBER = r"(\d+(?:\.\d+)?)"
_HEIGHT = re.compile(rf"{_NUMBER}\s*(?:m|metres?|meters?)\s+tall\b")  # "0.7 m tall": a height, not a shape
_WEIGHT = re.compile(rf"\bweighs?\s+{_NUMBER}\s*(?:kg|kilograms?)\b")
_GENERATION = re.compile(  # "generation 3", "gen iii", "gen. 3", "3rd gen", "4th-generation"
    r"\b(?:generation|gen)\s*[-.:#]?\s*(\d+|[ivx]+)\b|\b(\d+)(?:st|nd|rd|th)[\s-]*gen(?:eration)?\b"
)
_STAGE = re.compile(r"\bstage\s*-?\s*(1|2|one|two|i|ii)\b")


def _normalise(prompt: str) -> str:
    """Lower case without accents ("Pokémon" -> "pokemon"), typographic apostrophes made plain."""
    text = unicodedata.normalize("NFKD", prompt.replace("\u2019", "'"))
    return "".join(c for c in text if not unicodedata.combining(c)).lower()


def _take(pattern: re.Pattern, text: str) -> tuple[list[re.Match], str]:
    """All matches of ``pattern`` and the text with each replaced by a comma (so that words on either side
    are not read as adjacent)."""
    return list(pattern.finditer(text)), pattern.sub(" , ", text)


def _next_word(tokens: list[str], i: int) -> str | None:
    """The word right after token i, through at most one hyphen ("dark-blue"); None after punctuation."""
    j = i + 1
    if j < len(tokens) and tokens[j] == "-":
        j += 1
    return tokens[j] if j < len(tokens) and tokens[j][0].isalpha() else None


def _previous_word(tokens: list[str], i: int) -> int | None:
    """Index of the word right before token i, through at most one hyphen ("non-legendary"); None after
    punctuation or at the start."""
    j = i - 1
    if j >= 0 and tokens[j] == "-":
        j -= 1
    return j if j >= 0 and tokens[j][0].isalpha() else None


def _rule_names(prompt: str) -> dict[str, str]:
    """Attribute names the word rules read from a prompt; attributes it does not name are absent."""
    text = _normalise(prompt)
    found: dict[str, str] = {}

    # Step 1: phrases that would otherwise be misread word by word, taken out of the text.
    _, text = _take(_ABILITIES, text)
    heights, text = _take(_HEIGHT, text)
    weights, text = _take(_WEIGHT, text)
    size = size_from_measurements(
        float(heights[0].group(1)) if heights else None, float(weights[0].group(1)) if weights else None
    )
    generations, text = _take(_GENERATION, text)
    for m in generations[:1]:
        number = m.group(1) or m.group(2)
        g = int(number) if number.isdigit() else _ROMAN.get(number)
        if g is not None and 1 <= g <= MAX_GENERATION:
            found["generation"] = str(g)
    stages, text = _take(_STAGE, text)
    for m in stages[:1]:
        found["evolution_stage"] = f"stage{_NUMBER_WORDS[m.group(1)]}"
    type_phrases, text = _take(_TYPE_PHRASE, text)
    # When the prompt says which words are its types ("a fire-type dragon"), only those are types; a type
    # word elsewhere describes the creature ("dragon", "flying", "ghost") and is not read as its type.
    types = [t for m in type_phrases for t in m.groups() if t]

    # Step 2: word by word. Digits and punctuation are separators.
    tokens = re.findall(r"[a-z]+|[^\sa-z]", text)
    colours: list[str] = []
    main_colour = None  # the colour after "mostly"/"mainly": primary whatever its position
    for i, word in enumerate(tokens):
        if not word[0].isalpha():
            continue
        nxt = _next_word(tokens, i)
        p = _previous_word(tokens, i)
        previous = tokens[p] if p is not None else ""
        if word in ("dark", "light") and nxt in _COLOUR_WORDS:
            continue  # "dark blue": a shade of blue, not the dark type
        if word == "normal" and nxt in ("size", "sized"):
            found.setdefault("size_class", "medium")  # "normal size": medium, not the normal type
            continue
        if word == "ice" and nxt == "cream":
            continue  # "ice cream": a food, not the ice type
        if word in _COLOUR_WORDS:
            colour = _COLOUR_WORDS[word]
            if previous in ("dark", "light"):  # "mostly dark blue": look past the shade
                p = _previous_word(tokens, p)
                previous = tokens[p] if p is not None else ""
            if previous in _MOSTLY and main_colour is None:
                main_colour = colour
            colours.append(colour)
        elif word in TYPES and not type_phrases:
            types.append(word)
        elif word in _SIZE_WORDS:
            found.setdefault("size_class", _SIZE_WORDS[word])
        elif word in _SHAPE_WORDS:
            found.setdefault("shape", _SHAPE_WORDS[word])
        elif word in ("legendary", "mythical", "mythic"):
            # "non-legendary" / "not mythical" say what it is not; it could still be the other, so unknown
            if previous not in _NEGATIONS:
                found.setdefault("legendary", "legendary" if word == "legendary" else "mythical")
        elif word in _EVOLUTION_WORDS:
            found.setdefault("evolution_stage", _EVOLUTION_WORDS[word])

    # Step 3: first and second distinct values.
    types = list(dict.fromkeys(types))
    if types:
        found["type1"] = types[0]
    if len(types) > 1:
        found["type2"] = types[1]  # one type named: type2 stays unknown (the prompt did not say "single")
    colours = list(dict.fromkeys(([main_colour] if main_colour else []) + colours))
    if colours:
        found["primary_colour"] = colours[0]
    if len(colours) > 1:
        found["secondary_colour"] = colours[1]
    if "size_class" not in found and size is not None:
        found["size_class"] = size  # "It is 0.7 m tall and weighs 6.9 kg": the metadata stage's size rule
    return found


def parse_prompt(prompt: str, llm=None) -> dict[str, int]:
    """Attribute ids named by a prompt, in ``ATTRIBUTES`` order; what it does not name is unknown (0).

    Word rules, case-insensitive, on word boundaries; the first value named wins, a second distinct type
    or colour is type2 / the secondary colour. Ambiguities resolved on purpose (see the word tables):
    ability lists are skipped, "dark"/"light" before a colour is a shade, "normal size" is medium,
    "ice cream" is no type, "0.7 m tall" is a height, and with an explicit type phrase ("fire-type") other
    type words are not types. A name containing a type or colour word ("Gouging Fire") is read as that
    word: rules cannot tell names from descriptions.

    ``llm`` is the optional ``use_llm_parsing`` hook: any object with ``.attributes(prompt) -> dict[str,
    str]``; its answers fill only the attributes the rules left unknown, and values outside a vocabulary
    are ignored with a warning. The rules alone are always enough.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError(f"empty prompt {prompt!r}: describe the sprite, e.g. 'a small red fire type pokemon'")
    names = dict.fromkeys(ATTRIBUTES, "unknown")
    names.update(_rule_names(prompt))
    if llm is not None:
        for attribute, value in llm.attributes(prompt).items():
            name = value.strip().lower() if isinstance(value, str) else value
            if attribute not in ATTRIBUTES or name not in ATTRIBUTES[attribute]:
                warnings.warn(f"llm parsing: ignored {attribute}={value!r} (not an attribute value)", stacklevel=2)
            elif names[attribute] == "unknown":
                names[attribute] = name
    return {attribute: _id(attribute, name) for attribute, name in names.items()}


# --- from the pixels: body shape -----------------------------------------------------------------------

# A pixel is body when one of its channels differs from the background by more than this (out of 255):
# above JPEG ringing on a white page; the class shares on the training split are the same from 16 to 32.
SHAPE_MASK_THRESHOLD = 32
# Thresholds on the silhouette's bounding box, chosen on the prepared training split (807 sprites, 32 px)
# so that every class has a fair share (tall 23 %, wide 21 %, round 31 %, sparse 25 %):
TALL_RATIO = 1.25  # height / width >= this: tall
WIDE_RATIO = 0.8  # height / width <= this (1 / 1.25): wide
ROUND_FILL = 0.5  # otherwise, body pixels / box area >= this: round (a filled disc is 0.79), else sparse


def measure_shapes(
    images: torch.Tensor, background: tuple[int, int, int] = (255, 255, 255), threshold: int = SHAPE_MASK_THRESHOLD
) -> list[str]:
    """A body-shape class (one of ``SHAPES``, or "unknown" for an all-background image) per sprite.

    images: (N, 3, R, R) uint8 on ``background``. Tall / wide from the bounding box's aspect ratio first
    (what a prompt most often says), then round / sparse from how much of the box the body fills. A light
    patch enclosed by the body (a white belly) counts as background here, which lowers the fill a little.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 (N, 3, R, R), got {images.dtype} {tuple(images.shape)}")
    bg = torch.tensor(background, dtype=torch.int16, device=images.device).view(1, 3, 1, 1)
    mask = (images.to(torch.int16) - bg).abs().amax(dim=1) > threshold  # (N, H, W)
    height, width = mask.shape[1:]
    rows, cols = mask.any(dim=2), mask.any(dim=1)  # (N, H), (N, W)
    y = torch.arange(height, device=images.device)
    x = torch.arange(width, device=images.device)
    box_h = torch.where(rows, y, -1).amax(1) - torch.where(rows, y, height).amin(1) + 1  # (N,)
    box_w = torch.where(cols, x, -1).amax(1) - torch.where(cols, x, width).amin(1) + 1  # (N,)
    empty = mask.flatten(1).sum(1) == 0  # (N,)
    area = (box_h * box_w).clamp(min=1).float()
    fill = mask.flatten(1).sum(1) / area  # (N,)
    ratio = box_h.float() / box_w.clamp(min=1).float()  # (N,)
    classes = torch.where(fill >= ROUND_FILL, SHAPES.index("round") + 1, SHAPES.index("sparse") + 1)
    classes = torch.where(ratio <= WIDE_RATIO, SHAPES.index("wide") + 1, classes)
    classes = torch.where(ratio >= TALL_RATIO, SHAPES.index("tall") + 1, classes)
    classes = torch.where(empty, UNKNOWN, classes)  # ids into ATTRIBUTES["shape"]
    return [ATTRIBUTES["shape"][i] for i in classes.tolist()]


# --- balanced sampling ---------------------------------------------------------------------------------


def group_keys(attrs: torch.Tensor, with_shape: bool) -> torch.Tensor:
    """(N,) int64 id of each sprite's Type1 x PrimaryColour (x Shape) group, from (N, A) attribute ids.
    Unknown is a value like any other (the unknown-type sprites form their own groups)."""
    key = attrs[:, _COLUMN["type1"]] * len(ATTRIBUTES["primary_colour"]) + attrs[:, _COLUMN["primary_colour"]]
    if with_shape:
        key = key * len(ATTRIBUTES["shape"]) + attrs[:, _COLUMN["shape"]]
    return key  # (N,)


def balanced_weights(attrs: torch.Tensor, with_shape: bool) -> torch.Tensor:
    """(N,) float32 sampling weights inverse to the size of each sprite's group, summing to N: an epoch of
    ``torch.multinomial(weights, N, replacement=True)`` draws every group equally often in expectation."""
    _, group, size = torch.unique(group_keys(attrs, with_shape), return_inverse=True, return_counts=True)
    weights = 1.0 / size[group].float()  # (N,)
    return weights * (len(weights) / weights.sum())


def prompt_attributes(prompts: list[str], device: torch.device) -> torch.Tensor:
    """(B, A) attribute ids parsed from the prompts (an empty prompt is an error naming it)."""
    rows = [parse_prompt(p) for p in prompts]
    return torch.tensor([[row[k] for k in ATTRIBUTES] for row in rows], device=device)


def drop_attributes(attrs: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """Each attribute replaced by 0 ("unknown") with probability ``p``: a prompt that names only a colour
    must be a condition the model has seen."""
    if p <= 0:
        return attrs
    return torch.where(torch.rand(attrs.shape, generator=g, device=attrs.device) < p, torch.zeros_like(attrs), attrs)


def cardinalities() -> list[int]:
    """The vocabulary size of each attribute, in ATTRIBUTES' order (one embedding table each)."""
    return [len(values) for values in ATTRIBUTES.values()]


def vocabularies() -> dict[str, list[str]]:
    """Every attribute's vocabulary, as a bundle's config.yaml records it."""
    return {k: list(v) for k, v in ATTRIBUTES.items()}


def check_vocabularies(meta: dict, folder) -> None:
    """A bundle trained on other vocabularies would read every id wrongly: refuse it naming the folder."""
    if meta.get("attributes") != vocabularies():
        raise UserError(f"{folder}: its attribute vocabularies differ from this code's (spritegen/attributes.py); retrain it")
