"""Prompt generation, attribute helpers, the type-stratified subset and the captioner schema."""

from __future__ import annotations

import sys
import types as pytypes
from collections import Counter

import numpy as np
import pytest

from spritegen.data.captioner import CaptionError, load_captioner, validate_caption
from spritegen.data.imageio import Decoded
from spritegen.data.metadata import (
    PROMPT_STYLES,
    MetadataConfig,
    PromptAttributes,
    build_prompts,
    build_record,
    size_class,
    stratified_order,
    types_from_text,
)
from spritegen.errors import UserError

CHARIZARD = PromptAttributes(
    name="Charizard",
    types=("fire", "flying"),
    primary_colour="red",
    secondary_colour="yellow",
    size_class="large",
    generation=1,
    abilities=("blaze", "solar power"),
    height_m=1.7,
    weight_kg=90.5,
)


def test_at_least_five_distinct_prompts_of_every_style():
    prompts = build_prompts(CHARIZARD, 5, seed=0, key="pokemon-0006")
    assert len(prompts) == 5 and len(set(prompts)) == 5
    short, long, attributes, seeds, name = prompts
    assert short == "a red fire and flying type Pokémon"
    assert long.startswith("a large red and yellow fire and flying type Pokémon from generation 1")
    assert "blaze and solar power" in long
    assert attributes == "fire, flying, red, yellow, large"
    # the seeds' concatenated-description style
    assert seeds.startswith("Charizard. A fire and flying type Pokémon. Abilities: blaze, solar power.")
    assert "1.7 m tall" in seeds and "90.5 kg" in seeds
    assert name.startswith("Charizard")


def test_prompts_vary_in_length_and_all_styles_are_reachable():
    prompts = build_prompts(CHARIZARD, len(PROMPT_STYLES), seed=0, key="k")
    assert len(prompts) == len(PROMPT_STYLES) == len(set(prompts))
    lengths = sorted(len(p.split()) for p in prompts)
    assert lengths[0] <= 6 and lengths[-1] >= 15


def test_prompts_are_deterministic_and_depend_on_seed_and_key_only():
    a = build_prompts(CHARIZARD, 7, seed=3, key="x")
    assert a == build_prompts(CHARIZARD, 7, seed=3, key="x")
    variants = {build_prompts(CHARIZARD, 7, seed=s, key="x") for s in range(10)}
    assert len(variants) > 1  # the extra styles are drawn per seed
    assert all(v[:5] == a[:5] for v in variants)  # the core five never change


def test_colour_words_follow_the_measured_colours():
    blue = PromptAttributes(
        name="Squirtle", types=("water",), primary_colour="blue", secondary_colour="blue", size_class="small"
    )
    prompts = build_prompts(blue, 6, 0, "k")
    assert all("blue" in p for p in prompts if "Squirtle." not in p)
    assert not any(" and blue" in p or "blue and" in p for p in prompts)  # one colour, said once


def test_unknown_types_and_name_make_no_claims():
    a = PromptAttributes(name=None, types=(), primary_colour="green", secondary_colour="brown", size_class=None)
    prompts = build_prompts(a, 10, 0, "k")
    assert len(prompts) >= 5
    assert not any("type" in p for p in prompts)
    assert not any("None" in p for p in prompts)


def test_user_description_is_the_seeds_style_prompt():
    a = PromptAttributes(
        name="Bulba",
        types=("grass",),
        primary_colour="green",
        secondary_colour="green",
        size_class="small",
        description="  A small green creature\nwith a bulb on its back ",
    )
    assert "A small green creature with a bulb on its back" in build_prompts(a, 5, 0, "k")


def test_shiny_and_form_variants_are_mentioned():
    shiny = PromptAttributes(
        name="Charizard",
        types=("fire",),
        primary_colour="black",
        secondary_colour="red",
        size_class="large",
        variant="shiny",
    )
    assert any("shiny" in p for p in build_prompts(shiny, 5, 0, "k"))
    form = PromptAttributes(
        name="Charizard",
        types=("fire", "dragon"),
        primary_colour="black",
        secondary_colour="blue",
        size_class="large",
        variant="form",
        form="mega-x",
    )
    assert any("mega x form" in p for p in build_prompts(form, 10, 0, "k"))


def test_types_from_text():
    assert types_from_text("Charizard. A fire and flying type Pokémon.") == ("fire", "flying")
    assert types_from_text("a small WATER-type creature") == ("water",)
    assert types_from_text("Grass/Poison type") == ("grass", "poison")
    assert types_from_text("a cute yellow mouse") == ()
    assert types_from_text(None) == ()


def test_size_class():
    assert size_class(0.3, None) == "tiny"
    assert size_class(0.7, 6.9) == "small"
    assert size_class(1.0, None) == "medium"
    assert size_class(1.7, 90.5) == "large"
    assert size_class(14.5, None) == "huge"
    assert size_class(None, 1000.0) == "huge"
    assert size_class(None, None) is None


def _sprites(n_by_type: dict[str, int]) -> list[dict]:
    out = []
    for t, n in n_by_type.items():
        out += [{"key": f"{t}-{i:03d}", "types": [t]} for i in range(n)]
    return out


def test_stratified_subset_keeps_type_proportions():
    sprites = _sprites({"water": 60, "fire": 30, "ice": 10})
    order = stratified_order(sprites, seed=0)
    assert sorted(s["key"] for s in order) == sorted(s["key"] for s in sprites)  # a permutation
    first = Counter(s["types"][0] for s in order[:20])
    assert first == {"water": 12, "fire": 6, "ice": 2}
    assert [s["key"] for s in stratified_order(sprites, 0)] == [s["key"] for s in order]  # deterministic
    assert [s["key"] for s in stratified_order(sprites, 1)] != [s["key"] for s in order]


# --- captioner ----------------------------------------------------------------------------------------


def test_valid_caption_is_normalised():
    out = validate_caption(
        {
            "prompts": ["  a yellow  mouse ", "a yellow mouse"],
            "primary_colour": "Yellow",
            "types": ["Electric"],
            "legendary": False,
        }
    )
    assert out == {"prompts": ["a yellow mouse"], "primary_colour": "yellow", "types": ["electric"], "legendary": False}


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"prompt": ["x"]}, "unknown field"),
        ({"primary_colour": "orange"}, "primary_colour"),
        ({"types": ["fire", "water", "grass"]}, "types"),
        ({"types": ["plasma"]}, "types"),
        ({"prompts": "a string, not a list"}, "prompts"),
        ({"prompts": ["ok", ""]}, "prompts"),
        ({"legendary": "yes"}, "legendary"),
        ("not a mapping", "mapping"),
    ],
)
def test_invalid_captions_name_the_field(bad, field):
    with pytest.raises(CaptionError, match=field):
        validate_caption(bad)


class _GoodCaptioner:
    def caption(self, image, context):
        assert image.mode == "RGB"
        return {"prompts": [f"a drawing of {context['name']}"], "body_shape": "quadruped"}


class _BadCaptioner:
    def caption(self, image, context):
        return {"colour": "red"}


class _CrashingCaptioner:
    def caption(self, image, context):
        raise RuntimeError("model server down")


@pytest.fixture
def captioners(monkeypatch):
    module = pytypes.ModuleType("fake_captioners")
    module.Good, module.Bad, module.Crash = _GoodCaptioner, _BadCaptioner, _CrashingCaptioner
    monkeypatch.setitem(sys.modules, "fake_captioners", module)


def _decoded():
    rgb = np.full((32, 32, 3), 255, np.uint8)
    rgb[8:24, 8:24] = (220, 40, 40)
    return Decoded(rgb=rgb, alpha=None, width=32, height=32, format="PNG", mode="RGB", frames=1)


SPRITE = {
    "key": "pokemon-0006",
    "file": "images/pokemon-0006.png",
    "name": "Charizard",
    "types": ["fire", "flying"],
    "abilities": ["blaze"],
    "height_m": 1.7,
    "weight_kg": 90.5,
    "generation": 1,
    "dex": 6,
    "variant": "regular",
}


def test_captioner_adds_prompts_and_extra(captioners):
    record, warnings = build_record(SPRITE, _decoded(), MetadataConfig(), load_captioner("fake_captioners:Good"))
    assert warnings == []
    assert record.prompts[-1] == "a drawing of Charizard" and len(record.prompts) == 7
    assert record.extra["captioner"] == {"body_shape": "quadruped"}
    assert record.primary_colour == "red"  # measured, whatever a captioner says


@pytest.mark.parametrize(
    "spec, warning", [("fake_captioners:Bad", "captioner_invalid"), ("fake_captioners:Crash", "captioner_failed")]
)
def test_a_failing_captioner_falls_back_and_is_reported(captioners, spec, warning):
    record, warnings = build_record(SPRITE, _decoded(), MetadataConfig(), load_captioner(spec))
    assert [w for w, _ in warnings] == [warning]
    assert len(record.prompts) == 6


def test_no_captioner_needed():
    record, warnings = build_record(SPRITE, _decoded(), MetadataConfig(prompts_per_sprite=5))
    assert len(record.prompts) == 5 and warnings == []
    assert record.types == ("fire", "flying") and record.size_class == "large"


def test_unknown_types_are_flagged_not_dropped():
    sprite = {"key": "folder-x", "file": "images/folder-x.png", "description": "a cute round thing"}
    record, warnings = build_record(sprite, _decoded(), MetadataConfig())
    assert record.types == ("normal",) and record.extra["types_known"] is False
    assert {w for w, _ in warnings} == {"types_unknown", "size_unknown"}
    assert not any("normal" in p for p in record.prompts)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_colon", "module:Class"),
        ("nonexistent_mod_xyz:C", "cannot import"),
        ("fake_captioners:Missing", "no attribute"),
    ],
)
def test_captioner_loading_errors_name_the_spec(captioners, spec, message):
    with pytest.raises(UserError, match=message):
        load_captioner(spec)
