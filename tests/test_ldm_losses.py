"""The VAE's colour-weighted reconstruction term and the U-Net's pooled-text path."""

from __future__ import annotations

import torch

from spritegen.ldm.unet import UNetConfig, build_unet, denoise
from spritegen.ldm.vae import VAEConfig, recon_loss
from spritegen.image_losses import opponent as _opponent


def test_opponent_basis_is_orthonormal_so_weight_one_is_rgb_l2_geometry():
    x = torch.randn(4, 3, 5, 5)
    assert torch.allclose(_opponent(x, 1.0).pow(2).sum(1), x.pow(2).sum(1), atol=1e-5)
    grey = torch.full((1, 3, 2, 2), 0.3)
    assert torch.allclose(_opponent(grey, 8.0)[:, 1:], torch.zeros(1, 2, 2, 2), atol=1e-6)  # grey has no colour


def test_chroma_weight_scales_hue_errors_not_lightness_errors():
    """A pure lightness error costs the same at any weight; a pure hue error (red vs green of equal
    lightness) costs ``chroma_weight`` times what it costs at weight 1."""
    x = torch.zeros(1, 3, 4, 4)
    lighter = x + 0.2  # the same grey, lighter: luminance 0.2 * sqrt(3) in one of three channels
    for w in (1.0, 8.0):
        assert torch.isclose(recon_loss(lighter, x, VAEConfig(chroma_weight=w)), torch.tensor(0.2 * 3**0.5 / 3))
    red = torch.tensor([0.4, -0.4, 0.0])[None, :, None, None].expand(1, 3, 4, 4)  # R-G swing, same R+G+B
    hue_1 = recon_loss(red, -red, VAEConfig(chroma_weight=1.0))
    assert hue_1 > 0 and torch.isclose(recon_loss(red, -red, VAEConfig(chroma_weight=8.0)), 8 * hue_1)


def test_pooled_text_reaches_the_time_embedding():
    torch.manual_seed(0)
    cfg = UNetConfig(block_out_channels=[16, 32], norm_num_groups=8, attention_head_dim=8, pooled_text=True)
    unet = build_unet(cfg, latent_channels=4, latent_size=4, text_dim=12).eval()
    assert unet.config.class_embed_type == "projection"
    x_t, t = torch.randn(2, 4, 4, 4), torch.tensor([10, 500])
    states, mask = torch.randn(2, 5, 12), torch.ones(2, 5, dtype=torch.long)
    with torch.no_grad():
        before = denoise(unet, x_t, t, states, mask)
        torch.nn.init.zeros_(unet.class_embedding.linear_2.weight)
        torch.nn.init.zeros_(unet.class_embedding.linear_2.bias)
        after = denoise(unet, x_t, t, states, mask)
    assert before.shape == x_t.shape and not torch.allclose(before, after)

    plain = build_unet(UNetConfig(block_out_channels=[16, 32], norm_num_groups=8, attention_head_dim=8, pooled_text=False), 4, 4, 12)
    assert plain.class_embedding is None and not any(k.startswith("class_embedding") for k in plain.state_dict())
    assert denoise(plain.eval(), x_t, t, states, mask).shape == x_t.shape
