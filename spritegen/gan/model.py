"""The text-conditioned GAN of seed 002: generator, discriminator, the optional NCA and transformer critic,
the losses and the gradient penalty, DiffAugment, and the schedules - each a pure function of its inputs.

    G = Generator(cfg, resolution=32, text_width=256, cardinalities=[19, 20, ...])
    x_fake = G(z, text, attrs)            # (B, 3, R, R) in [-1, 1]; z (B, z_dim), text (B, text_width), attrs (B, A) ids
    D = ProjectionDiscriminator(cfg, 32, 256, cardinalities)
    logits = D(x, text, attrs)                             # (B,)
    loss_d = d_loss(D(x_real, t, a), D(x_fake, t, a), "nonsaturating", label_smoothing=0.9)
    loss_g = g_loss(D(x_fake, t, a), "nonsaturating")
    gp = gradient_penalty(D, x_real, x_fake, t, a, "wgan-gp", g)   # unweighted
    d_steps_at(cfg, epoch); critic_phase_at(cfg, epoch) -> ("isolated", 0.0); instance_noise_at(cfg, epoch)

Why the pieces look as they do:
* condition: the pooled prompt of the shared text stage and the prompt's attributes (spritegen/attributes.py,
  one embedding each), as the cvae family has it. The pooled states of our ~800 training prompts are nearly
  one vector (cosine 0.995 between prompts), and a GAN conditioned on them alone drew the same silhouette
  for every prompt (docs/gan.md); the attributes are the part of the prompt a GAN can read;
* generator: a mapping network turns [z, projected text, attribute embeddings] into a style w (StyleGAN's),
  and every synthesis block is modulated by w through AdaIN; the seed's Kaiming-normal init (a = 0.2) on
  its convolutions;
* discriminator: a projection discriminator (Miyato & Koyama 2018). The condition enters as an inner
  product with D's pooled features, ``D(x, t, a) = psi(phi(x)) + <V t + sum_i E_i[a_i], phi(x)>`` (one
  class embedding E_i per attribute, the paper's categorical projection): the condition is a term of
  the output that D cannot route around, where a concatenated condition is one input among many that D
  is free to ignore (and on ~800 sprites it does: real/fake is easier to learn than "matches the prompt").
  LeakyReLU 0.2 and dropout 0.3 as in the seed; no BatchNorm, so the gradient penalty's per-sample
  gradients are per sample;
* NCA: seed 002's refinement stage; each step every cell reads its 3x3 neighbourhood (identity + Sobel
  filters) and w through the seed's w-conditioning MLP, with LayerNorm and dropout in the update network;
* transformer critic: a small ViT scoring (image, prompt); how much it may say is ``critic_phase_at``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from spritegen.gan.config import GANConfig

LRELU = 0.2

# --- generator ----------------------------------------------------------------------------------------


class AdaIN(nn.Module):
    """Instance-normalise each feature map, then scale and shift it by the style: x' = (1 + s(w)) norm(x) + b(w)."""

    def __init__(self, channels: int, w_dim: int):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.style = nn.Linear(w_dim, 2 * channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        s, b = self.style(w).chunk(2, dim=1)  # (B, C) each
        return self.norm(x) * (1 + s[:, :, None, None]) + b[:, :, None, None]


class SynthesisBlock(nn.Module):
    """2x nearest upsampling, then two (3x3 convolution, LeakyReLU, AdaIN) layers."""

    def __init__(self, c_in: int, c_out: int, w_dim: int, upsample: bool):
        super().__init__()
        self.upsample = upsample
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.ada1 = AdaIN(c_out, w_dim)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.ada2 = AdaIN(c_out, w_dim)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.ada1(F.leaky_relu(self.conv1(x), LRELU), w)
        return self.ada2(F.leaky_relu(self.conv2(x), LRELU), w)


class Generator(nn.Module):
    def __init__(self, cfg: GANConfig, resolution: int, text_width: int, cardinalities: list[int]):
        super().__init__()
        cfg.check_resolution(resolution)
        self.cfg, self.resolution = cfg, resolution
        # --- mapping network: [z / |z|, projected text, attribute embeddings] -> w
        self.text_proj = nn.Linear(text_width, cfg.text_dim)
        self.attributes = nn.ModuleList(nn.Embedding(n, cfg.attr_dim) for n in cardinalities)
        layers, width = [], cfg.z_dim + cfg.text_dim + cfg.attr_dim * len(cardinalities)
        for _ in range(cfg.mapping_layers):
            layers += [nn.Linear(width, cfg.w_dim), nn.LeakyReLU(LRELU)]
            width = cfg.w_dim
        self.mapping = nn.Sequential(*layers)
        # --- synthesis: a learned 4x4 start, then one 2x block per further width
        ch = cfg.g_channels
        if cfg.g_start == "constant":
            self.start = nn.Parameter(torch.ones(1, ch[0], 4, 4))
        else:  # mapped: w -> (C, 4, 4), so the coarse layout follows the noise and the condition
            self.start = nn.Linear(cfg.w_dim, ch[0] * 16)
        self.blocks = nn.ModuleList([SynthesisBlock(ch[0], ch[0], cfg.w_dim, upsample=False)]
                                    + [SynthesisBlock(a, b, cfg.w_dim, upsample=True) for a, b in zip(ch[:-1], ch[1:])])
        self.to_rgb = nn.Conv2d(ch[-1], 3, 1)
        self._initialize_weights()
        self.nca = NCA(cfg, ch[-1]) if cfg.nca else None  # its own init (an update that starts at zero)

    def _initialize_weights(self) -> None:
        # the seed's "better weight initialization": Kaiming-normal for the LeakyReLU(0.2) that follows, on
        # the convolutions (the seed's) and on the mapping network's layers. Torch's default Linear init
        # shrinks the signal about 2x per layer: w then varied 0.04 across samples, every AdaIN style by 2%,
        # and the untrained generator already drew nearly one image for every noise and prompt (docs/gan.md)
        for m in [*self.modules()]:
            if isinstance(m, nn.Conv2d) or (isinstance(m, nn.Linear) and any(m is layer for layer in self.mapping)):
                nn.init.kaiming_normal_(m.weight, a=LRELU)
                nn.init.zeros_(m.bias)

    def style(self, z: torch.Tensor, text: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
        """(B, z_dim) noise, (B, text_width) pooled prompt and (B, A) attribute ids -> w (B, w_dim)."""
        z = z * torch.rsqrt(z.pow(2).mean(1, keepdim=True) + 1e-8)  # pixel norm: the scale of z carries nothing
        a = [emb(attrs[:, i]) for i, emb in enumerate(self.attributes)]
        return self.mapping(torch.cat([z, self.text_proj(text), *a], 1))

    def forward_alive(self, z: torch.Tensor, text: torch.Tensor, attrs: torch.Tensor, g: torch.Generator | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The image (B, 3, R, R) in [-1, 1] and, with the NCA, the share of alive cells (else None).
        ``g`` draws the NCA's stochastic cell updates in training."""
        w = self.style(z, text, attrs)
        if isinstance(self.start, nn.Linear):
            x = self.start(w).view(len(z), -1, 4, 4)
        else:
            x = self.start.expand(len(z), -1, -1, -1)
        for block in self.blocks:
            x = block(x, w)  # (B, C, r, r)
        rgb = self.to_rgb(x)  # (B, 3, R, R), before tanh
        alive = None
        if self.nca is not None:
            rgb, alive = self.nca(rgb, x, w, g)
        return torch.tanh(rgb), alive

    def forward(self, z: torch.Tensor, text: torch.Tensor, attrs: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        return self.forward_alive(z, text, attrs, g)[0]


class NCA(nn.Module):
    """Seed 002's neural cellular automaton, refining the synthesised image for ``nca_steps`` steps.

    State (B, C, R, R): channels 0-2 are the RGB (before tanh) the synthesis made, channel 3 is "alive"
    (Mordvintsev et al. 2020: a cell whose 3x3 neighbourhood holds a value > 0.1 is alive and may change),
    the rest hidden channels seeded from the synthesis features. Each step a cell reads its neighbourhood
    (identity + Sobel x/y per channel) and w through the seed's w-conditioning MLP; the update network is
    1x1 convolutions with LayerNorm over channels and dropout, its last layer zero-initialised so the NCA
    starts as the identity. In training a random ``fire_rate`` share of cells updates per step; in
    evaluation every cell takes the expected update (x fire_rate), so generation needs no random draws."""

    def __init__(self, cfg: GANConfig, feat_channels: int):
        super().__init__()
        c = cfg.nca_channels
        self.steps, self.fire_rate = cfg.nca_steps, cfg.nca_fire_rate
        self.seed_hidden = nn.Conv2d(feat_channels, c - 3, 1)
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8
        identity = torch.zeros(3, 3)
        identity[1, 1] = 1.0
        self.register_buffer("kernels", torch.stack([identity, sobel, sobel.T]).repeat(c, 1, 1)[:, None], persistent=False)  # (3C, 1, 3, 3)
        self.w_conditioning = nn.Sequential(nn.Linear(cfg.w_dim, 64), nn.ReLU(), nn.Linear(64, cfg.w_dim))
        self.update_in = nn.Conv2d(3 * c + cfg.w_dim, cfg.nca_hidden, 1)
        self.update_norm = nn.LayerNorm(cfg.nca_hidden)
        self.update_drop = nn.Dropout(cfg.nca_dropout)
        self.update_out = nn.Conv2d(cfg.nca_hidden, c, 1)
        nn.init.zeros_(self.update_out.weight)
        nn.init.zeros_(self.update_out.bias)

    def perceive(self, s: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 3C, H, W): each channel, its x and y gradients (edges replicated)."""
        return F.conv2d(F.pad(s, (1, 1, 1, 1), mode="replicate"), self.kernels, groups=s.shape[1])

    @staticmethod
    def alive_mask(s: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(s[:, 3:4], 3, stride=1, padding=1) > 0.1  # (B, 1, H, W)

    def forward(self, rgb: torch.Tensor, feats: torch.Tensor, w: torch.Tensor, g: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.cat([rgb, self.seed_hidden(feats)], 1)  # (B, C, H, W)
        B, _, H, W = s.shape
        wc = self.w_conditioning(w)[:, :, None, None].expand(-1, -1, H, W)  # (B, w_dim, H, W)
        for _ in range(self.steps):
            alive = self.alive_mask(s).float()
            h = self.update_in(torch.cat([self.perceive(s), wc], 1))
            h = self.update_norm(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # LayerNorm over channels, per cell
            dx = self.update_out(self.update_drop(F.relu(h)))
            if self.training and g is not None:
                fire = (torch.rand((B, 1, H, W), generator=g, device=s.device) < self.fire_rate).float()
            else:
                fire = self.fire_rate
            s = s + dx * fire * alive
        return s[:, :3], self.alive_mask(s).float().mean()


# --- discriminator and critic --------------------------------------------------------------------------


class ProjectionDiscriminator(nn.Module):
    """D(x, t, a) = psi(phi(x)) + <V t + sum_i E_i[a_i], phi(x)>, phi: convolutions down to 4x4, LeakyReLU +
    dropout, sum-pooled."""

    def __init__(self, cfg: GANConfig, resolution: int, text_width: int, cardinalities: list[int]):
        super().__init__()
        cfg.check_resolution(resolution)
        ch = cfg.d_channels
        self.from_rgb = nn.Conv2d(3, ch[0], 3, padding=1)
        self.downs = nn.ModuleList(nn.Conv2d(a, b, 4, stride=2, padding=1) for a, b in zip(ch[:-1], ch[1:]))
        self.mbstd = cfg.d_minibatch_std
        self.final = nn.Conv2d(ch[-1] + (1 if self.mbstd else 0), ch[-1], 3, padding=1)
        self.dropout = nn.Dropout(cfg.d_dropout)
        self.psi = nn.Linear(ch[-1], 1)
        self.embed = nn.Linear(text_width, ch[-1], bias=False)  # V: the prompt's projection
        self.attributes = nn.ModuleList(nn.Embedding(n, ch[-1]) for n in cardinalities)  # E_i: one class embedding per attribute
        for emb in self.attributes:  # |E_i[a]| about 1, as |V t| is: torch's N(0, 1) would make the condition ~11x the image term
            nn.init.normal_(emb.weight, std=ch[-1] ** -0.5)
        self.classify = nn.ModuleList(nn.Linear(ch[-1], n) for n in cardinalities)  # the auxiliary classifier (aux_weight)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dropout(F.leaky_relu(self.from_rgb(x), LRELU))
        for conv in self.downs:
            h = self.dropout(F.leaky_relu(conv(h), LRELU))
        if self.mbstd:
            h = torch.cat([h, minibatch_std(h, self.mbstd)], 1)
        h = F.leaky_relu(self.final(h), LRELU)  # (B, C, 4, 4)
        return h.sum(dim=(2, 3))  # (B, C): sum pooling, as in the projection discriminator paper

    def score(self, x: torch.Tensor, text: torch.Tensor, attrs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The real/fake logit (B,) and the auxiliary classifier's logits, one (B, n_i) per attribute."""
        phi = self.features(x)
        y = self.embed(text) + sum(emb(attrs[:, i]) for i, emb in enumerate(self.attributes))  # (B, C)
        return self.psi(phi).squeeze(1) + (y * phi).sum(1), [head(phi) for head in self.classify]

    def forward(self, x: torch.Tensor, text: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
        return self.score(x, text, attrs)[0]


def minibatch_std(h: torch.Tensor, group: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, 1, H, W): the std of the features across each group of samples, averaged over
    C, H, W, as one constant map per sample (ProGAN/StyleGAN). The group is the largest divisor of B up to
    ``group``, so any batch size works (a group of one has spread 0)."""
    B = len(h)
    g = max(d for d in range(1, min(group, B) + 1) if B % d == 0)
    y = h.reshape(g, B // g, *h.shape[1:])  # sample b belongs to group b % (B // g)
    std = (y.var(0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (B // g,)
    return std.repeat(g)[:, None, None, None].expand(B, 1, *h.shape[2:])


class TransformerCritic(nn.Module):
    """A small ViT over patches with the condition (the prompt plus its attributes' embeddings) as an extra
    first token; the score is read from that token."""

    def __init__(self, cfg: GANConfig, resolution: int, text_width: int, cardinalities: list[int]):
        super().__init__()
        from spritegen.config import ConfigError

        p, d = cfg.critic_patch, cfg.critic_width
        if resolution % p:
            raise ConfigError(f"gan.critic_patch: {p} does not divide the resolution {resolution}")
        if d % cfg.critic_heads:
            raise ConfigError(f"gan.critic_width: {d} is not divisible by critic_heads {cfg.critic_heads}")
        n = (resolution // p) ** 2
        self.patch = nn.Conv2d(3, d, p, stride=p)
        self.text = nn.Linear(text_width, d)
        self.attributes = nn.ModuleList(nn.Embedding(n, d) for n in cardinalities)
        for emb in self.attributes:
            nn.init.normal_(emb.weight, std=d ** -0.5)
        self.pos = nn.Parameter(torch.randn(1, n + 1, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, cfg.critic_heads, 2 * d, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.critic_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 1)

    def forward(self, x: torch.Tensor, text: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)  # (B, n, d)
        cond = self.text(text) + sum(emb(attrs[:, i]) for i, emb in enumerate(self.attributes))  # (B, d)
        h = self.blocks(torch.cat([cond[:, None], tokens], 1) + self.pos)
        return self.head(self.norm(h[:, 0])).squeeze(1)  # (B,)


# --- losses ---------------------------------------------------------------------------------------------


def d_loss(real: torch.Tensor, fake: torch.Tensor, kind: str, label_smoothing: float = 1.0) -> torch.Tensor:
    """The discriminator's loss from its logits on real and fake images (B,) each.

    nonsaturating: BCE with the real target ``label_smoothing`` (one-sided: fakes keep 0), i.e.
    t softplus(-r) + (1 - t) softplus(r) + softplus(f); hinge: relu(1 - r) + relu(1 + f); wgan: f - r.
    Hinge and wgan have no labels, so the smoothing does not apply to them."""
    if kind == "nonsaturating":
        t = label_smoothing
        return (t * F.softplus(-real) + (1 - t) * F.softplus(real)).mean() + F.softplus(fake).mean()
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    if kind == "wgan":
        return fake.mean() - real.mean()
    raise ValueError(f"unknown GAN loss {kind!r}")


def g_loss(fake: torch.Tensor, kind: str) -> torch.Tensor:
    """The generator's loss from D's logits on its images: softplus(-f) (nonsaturating), -f (hinge, wgan)."""
    if kind == "nonsaturating":
        return F.softplus(-fake).mean()
    if kind in ("hinge", "wgan"):
        return -fake.mean()
    raise ValueError(f"unknown GAN loss {kind!r}")


def gradient_penalty(D, real: torch.Tensor, fake: torch.Tensor, text: torch.Tensor, attrs: torch.Tensor, kind: str,
                     g: torch.Generator | None = None) -> torch.Tensor:
    """The unweighted penalty on D's input gradient (a graph to backpropagate through).

    wgan-gp (Gulrajani et al. 2017): E[(|grad_x D(x_hat)| - 1)^2], x_hat = e x_real + (1 - e) x_fake, e ~ U(0, 1)
    per sample; r1 (Mescheder et al. 2018): E[|grad_x D(x_real)|^2] (the loss adds gamma/2 of it)."""
    if kind == "none":
        return real.new_zeros(())
    if kind == "wgan-gp":
        e = torch.rand((len(real), 1, 1, 1), generator=g, device=real.device)
        x = e * real.detach() + (1 - e) * fake.detach()
    elif kind == "r1":
        x = real.detach()
    else:
        raise ValueError(f"unknown gradient penalty {kind!r}")
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x, text, attrs).sum(), x, create_graph=True)
    norm2 = grad.flatten(1).pow(2).sum(1)  # (B,)
    if kind == "r1":
        return norm2.mean()
    return (torch.sqrt(norm2 + 1e-12) - 1).pow(2).mean()


def penalty_scale(cfg: GANConfig) -> float:
    """What multiplies ``gradient_penalty`` in D's loss on a step that takes it: lambda (wgan-gp) or gamma/2
    (r1), times ``penalty_every`` (lazy regularisation keeps the penalty's average weight)."""
    return cfg.penalty_weight * (0.5 if cfg.penalty == "r1" else 1.0) * cfg.penalty_every


def attribute_loss(class_logits: list[torch.Tensor], attrs: torch.Tensor) -> torch.Tensor:
    """The auxiliary classifier's cross-entropy against attribute ids (B, A), averaged over every known id
    (0, "unknown", is no target); 0 when nothing is known."""
    total, known = attrs.new_zeros((), dtype=torch.float32), (attrs > 0).sum()
    for i, logits in enumerate(class_logits):
        total = total + F.cross_entropy(logits.float(), attrs[:, i], ignore_index=0, reduction="sum")
    return total / known.clamp(min=1)


def mode_seeking_loss(x: torch.Tensor, z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """MSGAN's term: rows i and i + B/2 share a condition and differ in noise; the loss is
    1 / (mean |x_i - x_{i+B/2}| / mean |z_i - z_{i+B/2}| + eps), large when the noise moves the image little."""
    h = len(x) // 2
    ratio = (x[:h] - x[h : 2 * h]).abs().mean() / (z[:h] - z[h : 2 * h]).abs().mean()
    return 1.0 / (ratio + eps)


def g_objective(D, critic, x_fake: torch.Tensor, text: torch.Tensor, attrs: torch.Tensor, kind: str, critic_weight: float,
                aux_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The generator's loss on D's (and the critic's) view of its images. With ``critic_weight`` 0 (the
    isolated and isolation phases) the critic is not called: no path from it to the generator exists."""
    logits, classes = D.score(x_fake, text, attrs)
    adv = g_loss(logits.float(), kind)
    loss, terms = adv, {"g_adv": adv}
    if aux_weight > 0:  # AC-GAN: the fakes must be classified as the attributes they were asked for
        terms["g_aux"] = attribute_loss(classes, attrs)
        loss = loss + aux_weight * terms["g_aux"]
    if critic is None or critic_weight <= 0:
        return loss, terms
    terms["g_critic"] = g_loss(critic(x_fake, text, attrs).float(), kind)
    return loss + critic_weight * terms["g_critic"], terms


# --- what the discriminator sees: curriculum, DiffAugment, instance noise ---------------------------------


def at_resolution(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """(B, C, R, R) average-pooled to ``resolution`` and blown back up (nearest): only coarse structure left."""
    R = x.shape[-1]
    if resolution >= R:
        return x
    f = R // resolution
    return F.interpolate(F.avg_pool2d(x, f), scale_factor=f, mode="nearest")


def diff_augment(x: torch.Tensor, policies: tuple[str, ...], g: torch.Generator) -> torch.Tensor:
    """DiffAugment (Zhao et al. 2020, the authors' DiffAugment_pytorch.py), differentiable, one draw per
    image from ``g``: color (brightness +-0.5, saturation x[0, 2], contrast x[0.5, 1.5]), translation (up
    to 1/8 of the side, zero-filled), cutout (a square of half the side set to 0)."""
    B, _, H, W = x.shape
    dev = x.device
    for policy in policies:
        if policy == "color":
            u = torch.rand((3, B, 1, 1, 1), generator=g, device=dev)
            x = x + (u[0] - 0.5)
            mean = x.mean(dim=1, keepdim=True)
            x = (x - mean) * (u[1] * 2) + mean
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * (u[2] + 0.5) + mean
        elif policy == "translation":
            sx, sy = int(H * 0.125 + 0.5), int(W * 0.125 + 0.5)
            tx = torch.randint(-sx, sx + 1, (B, 1, 1), generator=g, device=dev)
            ty = torch.randint(-sy, sy + 1, (B, 1, 1), generator=g, device=dev)
            gb, gx, gy = torch.meshgrid(torch.arange(B, device=dev), torch.arange(H, device=dev), torch.arange(W, device=dev), indexing="ij")
            gx = torch.clamp(gx + tx + 1, 0, H + 1)
            gy = torch.clamp(gy + ty + 1, 0, W + 1)
            x = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)[gb, gx, gy].permute(0, 3, 1, 2)
        elif policy == "cutout":
            cx, cy = int(H * 0.5 + 0.5), int(W * 0.5 + 0.5)
            ox = torch.randint(0, H + (1 - cx % 2), (B, 1, 1), generator=g, device=dev)
            oy = torch.randint(0, W + (1 - cy % 2), (B, 1, 1), generator=g, device=dev)
            gb, gx, gy = torch.meshgrid(torch.arange(B, device=dev), torch.arange(cx, device=dev), torch.arange(cy, device=dev), indexing="ij")
            gx = torch.clamp(gx + ox - cx // 2, 0, H - 1)
            gy = torch.clamp(gy + oy - cy // 2, 0, W - 1)
            mask = torch.ones((B, H, W), device=dev, dtype=x.dtype)
            mask[gb, gx, gy] = 0
            x = x * mask[:, None]
        else:
            raise ValueError(f"unknown DiffAugment policy {policy!r}")
    return x


def discriminator_view(x: torch.Tensor, cfg: GANConfig, resolution: int, sigma: float, real: bool,
                       g: torch.Generator) -> torch.Tensor:
    """What D is shown of a batch: the curriculum's resolution, DiffAugment, then instance noise (std
    ``sigma``) on reals, and on fakes too when ``instance_noise_on`` is both."""
    x = at_resolution(x, resolution)
    if cfg.augment_policies:
        x = diff_augment(x, cfg.augment_policies, g)
    if sigma > 0 and (real or cfg.instance_noise_on == "both"):
        x = x + sigma * torch.randn(x.shape, generator=g, device=x.device)
    return x


# --- schedules: pure functions of the (fractional, 0-based) epoch -----------------------------------------


def d_steps_at(cfg: GANConfig, epoch: float) -> int:
    """Discriminator steps per generator step: d_steps_early before d_steps_boundary, then d_steps_late."""
    return cfg.d_steps_early if epoch < cfg.d_steps_boundary else cfg.d_steps_late


CRITIC_TRAINS = {"off": False, "isolated": True, "isolation": False, "ramp": True, "integrated": True}


def critic_phase_at(cfg: GANConfig, epoch: float) -> tuple[str, float]:
    """(phase, weight of the critic in the generator's loss). isolated: it trains, weight 0; isolation: it is
    frozen, weight 0; ramp: it trains, the weight rises linearly from 0 to critic_weight; integrated."""
    if not cfg.critic:
        return "off", 0.0
    a = cfg.critic_isolated_epochs
    b = a + cfg.critic_isolation_epochs
    c = b + cfg.critic_ramp_epochs
    if epoch < a:
        return "isolated", 0.0
    if epoch < b:
        return "isolation", 0.0
    if epoch < c:
        return "ramp", cfg.critic_weight * (epoch - b) / cfg.critic_ramp_epochs
    return "integrated", cfg.critic_weight


def instance_noise_at(cfg: GANConfig, epoch: float) -> float:
    """The instance noise std: constant, or decaying linearly to 0 over instance_noise_decay_epochs."""
    if cfg.instance_noise_decay_epochs <= 0:
        return cfg.instance_noise
    return cfg.instance_noise * max(0.0, 1.0 - epoch / cfg.instance_noise_decay_epochs)


def curriculum_resolution_at(cfg: GANConfig, epoch: float, full: int) -> int:
    """The resolution D compares at: that of the last curriculum entry whose epoch has come, else ``full``."""
    resolution = full
    for start, r in cfg.curriculum:
        if epoch >= start:
            resolution = r
    return min(resolution, full)


def count_parameters(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())

