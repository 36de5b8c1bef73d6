"""Categorical attributes of the CVAE: vocabularies, ids from records, the prompt parser, body shapes from
silhouettes, balanced sampling weights."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch

from spritegen.attributes import (
    ATTRIBUTES,
    SHAPES,
    UNKNOWN,
    attribute_matrix,
    balanced_weights,
    describe,
    group_keys,
    measure_shapes,
    parse_prompt,
    record_attributes,
)
from spritegen.data.dataset import SpriteRecord
from spritegen.data.metadata import PROMPT_STYLES, PromptAttributes, build_prompts
from spritegen.data.vocab import COLOUR_NAMES, SIZE_CLASSES, TYPES
from spritegen.errors import UserError


def named(prompt: str, llm=None) -> dict[str, str]:
    """The attributes a prompt names (unknown ones left out), by name."""
    return {k: v for k, v in describe(parse_prompt(prompt, llm)).items() if v != "unknown"}


def record(**changes) -> SpriteRecord:
    fields = dict(
        id="pokemon-0001",
        name="Bulbasaur",
        types=("grass", "poison"),
        primary_colour="green",
        secondary_colour="blue",
        size_class="small",
        variant="regular",
        prompts=("a green grass and poison type Pokémon",) * 5,
        generation=1,
    )
    fields.update(changes)
    return SpriteRecord(**fields)


# --- vocabularies --------------------------------------------------------------------------------------


def test_vocabularies_start_with_unknown_and_have_the_documented_sizes():
    assert list(ATTRIBUTES) == [
        "type1", "type2", "primary_colour", "secondary_colour", "size_class", "generation", "shape",
        "legendary", "evolution_stage",
    ]  # fmt: skip
    assert all(vocab[UNKNOWN] == "unknown" and len(set(vocab)) == len(vocab) for vocab in ATTRIBUTES.values())
    sizes = {name: len(vocab) for name, vocab in ATTRIBUTES.items()}
    assert sizes == {
        "type1": 19, "type2": 20, "primary_colour": 11, "secondary_colour": 11, "size_class": 6,
        "generation": 10, "shape": 1 + len(SHAPES), "legendary": 4, "evolution_stage": 4,
    }  # fmt: skip
    assert ATTRIBUTES["type2"][1] == "none" and ATTRIBUTES["type1"][1:] == TYPES
    assert ATTRIBUTES["size_class"][1:] == SIZE_CLASSES and ATTRIBUTES["primary_colour"][1:] == COLOUR_NAMES
    assert 3 <= len(SHAPES) <= 5


def test_describe_round_trips_and_rejects_bad_ids():
    ids = {"type1": ATTRIBUTES["type1"].index("fire"), "shape": ATTRIBUTES["shape"].index("round")}
    assert describe(ids) == {"type1": "fire", "shape": "round"}
    with pytest.raises(ValueError, match="type1"):
        describe({"type1": len(ATTRIBUTES["type1"])})
    with pytest.raises(ValueError, match="habitat"):
        describe({"habitat": 0})


# --- the prompt parser ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("a green grass and poison type Pokémon", {"type1": "grass", "type2": "poison", "primary_colour": "green"}),
        (
            "grass, poison, green, small",
            {"type1": "grass", "type2": "poison", "primary_colour": "green", "size_class": "small"},
        ),
        (
            "Bulbasaur. A grass and poison type Pokémon. Abilities: overgrow, chlorophyll. Mostly green. "
            "It is 0.7 m tall and weighs 6.9 kg. Generation 1.",
            # "0.7 m tall" is a height (-> small, the metadata stage's rule), not the tall shape
            {"type1": "grass", "type2": "poison", "primary_colour": "green", "size_class": "small", "generation": "1"},
        ),
        (
            "green grass poison pokemon small",
            {"type1": "grass", "type2": "poison", "primary_colour": "green", "size_class": "small"},
        ),
        # an explicit type phrase: "dragon" describes the creature, "red" is the only colour named
        ("a fire-type dragon with glowing red eyes", {"type1": "fire", "primary_colour": "red"}),
        # "dark" before a colour is a shade, not the dark type; one type named: type2 unknown, not "none"
        ("dark blue water pokemon", {"type1": "water", "primary_colour": "blue"}),
        (
            "a small legendary ice pokemon from gen 4",
            {"type1": "ice", "size_class": "small", "legendary": "legendary", "generation": "4"},
        ),
    ],
)
def test_parse_prompt_reads_the_attributes_a_prompt_names(prompt, expected):
    assert named(prompt) == expected


def test_parse_prompt_leaves_everything_unknown_for_unknown_words():
    ids = parse_prompt("the quick zorp jumps over a lazy blorb!")
    assert list(ids) == list(ATTRIBUTES) and set(ids.values()) == {UNKNOWN}


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_parse_prompt_refuses_an_empty_prompt(prompt):
    with pytest.raises(UserError, match="empty prompt"):
        parse_prompt(prompt)


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("GREY and Violet, a FIRE-TYPE", {"primary_colour": "gray", "secondary_colour": "purple", "type1": "fire"}),
        ("a golden bird, mostly orange", {"primary_colour": "red", "secondary_colour": "yellow", "shape": None}),
        ("ground, dark, red, gray, large", {"type1": "ground", "type2": "dark", "primary_colour": "red"}),
        ("a light-blue ice cream pokemon", {"primary_colour": "blue", "type1": None}),
        ("a normal sized pokemon", {"size_class": "medium", "type1": None}),
        ("a normal type pokemon", {"type1": "normal", "size_class": None}),
        ("fire/flying type, gen iii", {"type1": "fire", "type2": "flying", "generation": "3"}),
        ("a 4th generation little thing", {"generation": "4", "size_class": "small"}),
        ("from generation 12", {"generation": None}),
        ("a big chubby mythical pokemon", {"size_class": "large", "shape": "round", "legendary": "mythical"}),
        ("a non-legendary pokemon", {"legendary": None}),
        ("a giant upright stage 2 pokemon", {"size_class": "huge", "shape": "tall", "evolution_stage": "stage2"}),
        ("a water type with the abilities flash fire and good as gold", {"type1": "water", "primary_colour": None}),
        ("a fire and fire type", {"type1": "fire", "type2": None}),
    ],
)
def test_parse_prompt_rules(prompt, expected):
    """Synonyms, shades, ambiguous words, numbers; None: must stay unknown."""
    got = describe(parse_prompt(prompt))
    assert {k: got[k] for k in expected} == {k: v or "unknown" for k, v in expected.items()}


def test_parse_prompt_reads_back_every_prompt_style_the_metadata_stage_writes():
    """Over every type pair, each prompt names the true type1 / colours or leaves them unknown: never wrong.
    Abilities that contain type and colour words ("flash fire", "good as gold") do not leak into them."""
    for t1, t2 in itertools.product(TYPES, (None, *TYPES)):
        if t1 == t2:
            continue
        attrs = PromptAttributes(
            name="Bulbasaur",
            types=(t1,) if t2 is None else (t1, t2),
            primary_colour="blue",
            secondary_colour="pink",
            size_class="huge",
            generation=7,
            abilities=("flash fire", "good as gold"),
            height_m=3.5,
            weight_kg=590.0,
        )
        for prompt in build_prompts(attrs, len(PROMPT_STYLES), seed=0, key=f"{t1}-{t2}"):
            got = describe(parse_prompt(prompt))
            names_types = re.search(rf"\b{t1}\b", prompt) is not None  # 8 of the 10 styles do
            assert got["type1"] == (t1 if names_types else "unknown"), prompt
            assert got["type2"] == (t2 if names_types and t2 else "unknown"), prompt
            assert got["primary_colour"] == "blue", prompt
            assert got["secondary_colour"] in ("unknown", "pink"), prompt
            assert got["size_class"] in ("unknown", "huge"), prompt
            assert got["generation"] in ("unknown", "7"), prompt


class FakeLLM:
    def __init__(self, answer: dict[str, str]):
        self.answer = answer
        self.prompts: list[str] = []

    def attributes(self, prompt: str) -> dict[str, str]:
        self.prompts.append(prompt)
        return self.answer


def test_llm_hook_fills_only_unknowns_and_ignores_values_outside_the_vocabulary():
    llm = FakeLLM(
        {
            "type1": "water",  # the rules read "fire": kept
            "type2": "Flying",  # unknown to the rules: filled (case-insensitive)
            "primary_colour": "orange",  # not a vocabulary value: warned, ignored
            "habitat": "forest",  # not an attribute: warned, ignored
            "shape": "round",
        }
    )
    with pytest.warns(UserWarning) as caught:
        got = named("a small fire type pokemon", llm)
    assert llm.prompts == ["a small fire type pokemon"]
    assert got == {"type1": "fire", "type2": "flying", "size_class": "small", "shape": "round"}
    messages = " | ".join(str(w.message) for w in caught)
    assert "primary_colour" in messages and "orange" in messages
    assert "habitat" in messages and "forest" in messages


def test_llm_hook_is_optional():
    assert parse_prompt("a red pokemon") == parse_prompt("a red pokemon", llm=None)


# --- ids from a record ----------------------------------------------------------------------------------


def test_record_attributes_of_a_complete_dual_typed_record():
    got = describe(record_attributes(record(extra={"legendary": "Mythical"}), "wide"))
    assert got == {
        "type1": "grass", "type2": "poison", "primary_colour": "green", "secondary_colour": "blue",
        "size_class": "small", "generation": "1", "shape": "wide", "legendary": "mythical",
        "evolution_stage": "unknown",
    }  # fmt: skip


def test_stand_ins_for_unknown_type_and_size_become_unknown():
    """build_record stores ("normal",) and "medium" when the source had none: they must not be learned."""
    r = record(types=("normal",), size_class="medium", extra={"types_known": False, "size_known": False})
    got = describe(record_attributes(r, None))
    assert got["type1"] == "unknown" and got["type2"] == "unknown"
    assert got["size_class"] == "unknown" and got["shape"] == "unknown"


def test_single_typed_record_has_type2_none():
    got = describe(record_attributes(record(types=("fire",)), None))
    assert got["type1"] == "fire" and got["type2"] == "none"


@pytest.mark.parametrize("generation, expected", [(None, "unknown"), (0, "unknown"), (12, "unknown"), (9, "9")])
def test_record_generation_out_of_range_is_unknown(generation, expected):
    assert describe(record_attributes(record(generation=generation), None))["generation"] == expected


@pytest.mark.parametrize(
    "extra, legendary, stage",
    [
        ({}, "unknown", "unknown"),
        ({"legendary": True}, "legendary", "unknown"),
        ({"legendary": False, "mythical": False, "evolution_stage": "stage1"}, "ordinary", "stage1"),
        ({"legendary": False}, "unknown", "unknown"),  # could still be mythical
        ({"legendary": "sort of", "evolution_stage": 2}, "unknown", "unknown"),  # not guessed
    ],
)
def test_record_legendary_and_stage_only_from_the_source(extra, legendary, stage):
    got = describe(record_attributes(record(extra=extra), None))
    assert (got["legendary"], got["evolution_stage"]) == (legendary, stage)


def test_attribute_matrix_rows_follow_attributes_order():
    records = [record(), record(id="b", types=("fire",), primary_colour="red")]
    m = attribute_matrix(records, ["tall", None])
    assert m.dtype == torch.long and m.shape == (2, len(ATTRIBUTES))
    assert m[0].tolist() == list(record_attributes(records[0], "tall").values())
    assert m[1, list(ATTRIBUTES).index("type2")] == ATTRIBUTES["type2"].index("none")
    assert m[1, list(ATTRIBUTES).index("shape")] == UNKNOWN
    assert attribute_matrix([], []).shape == (0, len(ATTRIBUTES))
    with pytest.raises(ValueError, match="2 records but 1 shapes"):
        attribute_matrix(records, ["tall"])
    with pytest.raises(ValueError, match="shape"):
        attribute_matrix(records, ["tall", "triangular"])


# --- body shapes from silhouettes -------------------------------------------------------------------------


def canvas(n: int = 1, size: int = 32) -> torch.Tensor:
    return torch.full((n, 3, size, size), 255, dtype=torch.uint8)


def test_measure_shapes_on_synthetic_silhouettes():
    images = canvas(6)
    blue = torch.tensor([40, 90, 200], dtype=torch.uint8).view(3, 1, 1)
    images[0, :, 2:30, 12:20] = blue  # tall thin rectangle, 28 x 8
    images[1, :, 12:20, 2:30] = blue  # wide rectangle, 8 x 28
    yy, xx = torch.meshgrid(torch.arange(32) + 0.5, torch.arange(32) + 0.5, indexing="ij")
    disc = (yy - 16) ** 2 + (xx - 16) ** 2 <= 12**2
    images[2, :, disc] = 200  # a filled disc: fill pi/4
    cross = ((yy - 16).abs() < 1.5) | ((xx - 16).abs() < 1.5) | ((yy - xx).abs() < 1.5)
    images[3, :, cross & (yy > 2) & (yy < 30) & (xx > 2) & (xx < 30)] = 20  # thin strokes: sparse
    images[5] = (images[5].int() - torch.randint(0, 20, (3, 32, 32), generator=torch.Generator().manual_seed(0))).to(
        torch.uint8
    )  # JPEG-like ringing on the page only: still blank
    assert measure_shapes(images) == ["tall", "wide", "round", "sparse", "unknown", "unknown"]


def test_measure_shapes_uses_the_given_background_and_checks_its_input():
    images = torch.zeros((1, 3, 16, 16), dtype=torch.uint8)  # a black page
    assert measure_shapes(images, background=(0, 0, 0)) == ["unknown"]
    images[0, :, 1:15, 6:10] = 255
    assert measure_shapes(images, background=(0, 0, 0)) == ["tall"]
    with pytest.raises(ValueError, match="uint8"):
        measure_shapes(images.float())


# --- balanced sampling ------------------------------------------------------------------------------------


def attrs_of(groups: list[tuple[str, str, str]]) -> torch.Tensor:
    """(N, A) ids with type1, primary colour and shape set, the rest unknown."""
    m = torch.zeros((len(groups), len(ATTRIBUTES)), dtype=torch.long)
    cols = [list(ATTRIBUTES).index(a) for a in ("type1", "primary_colour", "shape")]
    for i, names in enumerate(groups):
        for col, (attribute, name) in zip(cols, zip(("type1", "primary_colour", "shape"), names)):
            m[i, col] = ATTRIBUTES[attribute].index(name)
    return m


def test_balanced_weights_are_inverse_to_the_group_size():
    attrs = attrs_of([("fire", "red", "tall")] * 3 + [("water", "blue", "round")])
    w = balanced_weights(attrs, with_shape=False)
    assert w.dtype == torch.float32 and w.shape == (4,)
    assert math.isclose(w.sum().item(), 4.0, rel_tol=1e-6)
    assert torch.allclose(w[3], 3 * w[0]) and torch.allclose(w[:3], w[0].expand(3))
    # a drawn epoch gives both groups the same share in expectation
    draws = torch.multinomial(w, 6000, replacement=True, generator=torch.Generator().manual_seed(0))
    assert abs((draws == 3).float().mean().item() - 0.5) < 0.03


def test_group_keys_split_by_shape_only_when_asked():
    attrs = attrs_of(
        [("fire", "red", "tall"), ("fire", "red", "wide"), ("fire", "blue", "tall"), ("ice", "red", "tall")]
    )
    without, with_shape = group_keys(attrs, with_shape=False), group_keys(attrs, with_shape=True)
    assert without[0] == without[1] and len(set(without.tolist())) == 3
    assert len(set(with_shape.tolist())) == 4
    w = balanced_weights(attrs, with_shape=False)
    assert torch.allclose(w[2], 2 * w[0])
    assert torch.allclose(balanced_weights(attrs, with_shape=True), torch.ones(4))
