"""Attribute vocabularies shared by metadata, conditioning and evaluation.

Index 0 of every vocabulary that may be absent is reserved for "none/unknown", so attribute ids are
always valid embedding indices.
"""

TYPES = (
    "normal", "fire", "water", "grass", "electric", "ice", "fighting", "poison", "ground",
    "flying", "psychic", "bug", "rock", "ghost", "dragon", "dark", "steel", "fairy",
)

# The ten official Pokédex colour names, with a reference RGB used to name a measured colour.
COLOURS = {
    "black": (40, 40, 40),
    "blue": (60, 110, 210),
    "brown": (150, 100, 55),
    "gray": (150, 150, 155),
    "green": (80, 170, 80),
    "pink": (240, 150, 190),
    "purple": (145, 90, 175),
    "red": (215, 50, 50),
    "white": (240, 240, 235),
    "yellow": (240, 210, 60),
}
COLOUR_NAMES = tuple(COLOURS)

SIZE_CLASSES = ("tiny", "small", "medium", "large", "huge")
VARIANTS = ("regular", "shiny", "form")
MAX_GENERATION = 9

# Sizes of the categorical conditioning vocabularies (with the reserved "none" at index 0 where noted).
ATTRIBUTE_CARDINALITY = {
    "type1": len(TYPES),
    "type2": len(TYPES) + 1,  # 0 = single-typed
    "primary_colour": len(COLOUR_NAMES),
    "secondary_colour": len(COLOUR_NAMES),
    "size_class": len(SIZE_CLASSES),
    "generation": MAX_GENERATION + 1,  # 0 = unknown
    "variant": len(VARIANTS),
}
