"""The evaluation prompt set is deterministic, disjoint by split, and cycles prompt styles."""

import pytest

from spritegen.errors import UserError
from spritegen.sample_set import choose_prompt_set


def test_prompt_set_is_deterministic_and_split_aware(synthetic_prepared):
    a = choose_prompt_set(synthetic_prepared, heldout=6, train=4, seeds_per_prompt=2, seed=0)
    b = choose_prompt_set(synthetic_prepared, heldout=6, train=4, seeds_per_prompt=2, seed=0)
    assert [(i.prompt, i.seed, i.record.id) for i in a] == [(i.prompt, i.seed, i.record.id) for i in b]
    assert len(a) == (6 + 4) * 2
    assert [i.split for i in a[:12]] == [i.split for i in a[:12] if i.split in ("val", "test")]
    assert all(i.split == "train" for i in a[12:])
    assert [i.seed for i in a[:4]] == [0, 1, 0, 1]
    # consecutive prompts come from different prompt styles
    assert a[0].prompt == a[0].record.prompts[0] and a[2].prompt == a[2].record.prompts[1]
    c = choose_prompt_set(synthetic_prepared, heldout=6, train=4, seeds_per_prompt=2, seed=1)
    assert [i.record.id for i in c] != [i.record.id for i in a]


def test_prompt_set_too_large_is_an_error(synthetic_prepared):
    with pytest.raises(UserError, match="only 16 sprites"):
        choose_prompt_set(synthetic_prepared, heldout=17, train=1, seeds_per_prompt=1, seed=0)
