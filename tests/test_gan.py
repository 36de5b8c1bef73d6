"""The GAN family (seed 002, issue 13): each fix a param, the schedules as pure functions of the epoch,
the losses and the gradient penalty against hand-computed values, the collapse monitor being the
evaluation rubric's own code, and a tiny end-to-end run with kill-and-resume."""

import pytest

from spritegen.config import ConfigError, from_dict
from spritegen.gan.config import GANConfig

# --- the params -------------------------------------------------------------------------------------------


def test_the_defaults_validate_and_build_32_px():
    cfg = from_dict(GANConfig, {}, "gan")
    assert cfg.resolution == 32 and cfg.augment_policies == ("color", "translation", "cutout")
    cfg.check_resolution(32)
    with pytest.raises(ConfigError, match=r"gan\.g_channels: 4 entries build 32 px images but the data is 16 px \(give 3 entries\)"):
        cfg.check_resolution(16)


@pytest.mark.parametrize("values,message", [
    ({"diffaugment": "color,blur"}, r"gan\.diffaugment: unknown policy \['blur'\]"),
    ({"curriculum": [[0, 8], [0, 16]]}, r"gan\.curriculum\[1\]: epochs must ascend"),
    ({"curriculum": [[0, 12]]}, r"gan\.curriculum\[0\]: resolution 12 is not a power of two"),
    ({"curriculum": [[0]]}, r"gan\.curriculum\[0\]: expected \[epoch, resolution\]"),
    ({"loss": "bce"}, r"gan\.loss: 'bce' is not one of"),
    ({"penalty": "gp"}, r"gan\.penalty: 'gp' is not one of"),
    ({"label_smoothing": 0.0}, r"gan\.label_smoothing: 0\.0 must be > 0"),
    ({"g_channels": [8]}, r"g_channels/d_channels: at least two entries"),
])
def test_bad_values_are_errors_naming_the_key(values, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(GANConfig, values, "gan")


def test_diffaugment_empty_is_off():
    assert from_dict(GANConfig, {"diffaugment": ""}, "gan").augment_policies == ()
