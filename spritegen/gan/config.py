"""params.yaml ``gan``: the text-conditioned GAN of seed 002 with each of its mode-collapse fixes a param.

    gan:
      loss: nonsaturating       # hinge | wgan | nonsaturating
      penalty: r1               # wgan-gp | r1 | none
      lr_g: 0.0002              # the seed's 5e-5 is for hundreds of epochs; see the field docs
      d_steps_early: 3          # D steps per G step before d_steps_boundary, then d_steps_late
      ...

Fields marked ``arch`` define the weights of the generator (or of a training-only network: the
discriminator and the critic live in the run state); loading a checkpoint whose saved values differ is
refused. The seed's own values are written in each field's doc where the default differs (docs/gan.md
says why): its defaults were for hundreds of epochs on a GPU, ours must train in minutes on 2 cores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from spritegen.config import ConfigError

DIFFAUGMENT_POLICIES = ("color", "translation", "cutout")


@dataclass
class GANConfig:
    # --- generator: mapping network + AdaIN synthesis ----------------------------------------------
    z_dim: int = field(default=64, metadata={"arch": True, "ge": 1, "doc": "noise size"})
    text_dim: int = field(default=64, metadata={"arch": True, "ge": 1, "doc": "width the pooled text embedding (shared text stage) is projected to before the mapping network"})
    attr_dim: int = field(default=8, metadata={"arch": True, "ge": 1, "doc": "width of each attribute's embedding in the generator's condition (spritegen/attributes.py: type, colours, size, shape, ...)"})
    w_dim: int = field(default=128, metadata={"arch": True, "ge": 1, "doc": "style vector w: the mapping network's output, read by every AdaIN and by the NCA"})
    mapping_layers: int = field(default=3, metadata={"arch": True, "ge": 1, "doc": "fully connected layers of the mapping network [z, text, attributes] -> w (LeakyReLU 0.2)"})
    attribute_dropout: float = field(default=0.1, metadata={"ge": 0, "lt": 1, "doc": "in training each attribute of a sprite is replaced by 'unknown' with this probability (for G's and D's condition alike), so a prompt that names only a colour is a condition the GAN has seen"})
    g_start: Literal["mapped", "constant"] = field(default="mapped", metadata={"arch": True, "doc": "the synthesis's 4x4 input: mapped (a linear map of w, so the noise and the condition place the coarse shape) or constant (StyleGAN's learned constant: only the AdaIN styles vary, and our 40-epoch runs drew one silhouette for every noise and prompt, docs/gan.md)"})
    g_channels: list[int] = field(default_factory=lambda: [128, 128, 64, 32], metadata={"arch": True, "ge": 1, "doc": "generator widths: a learned 4x4 start, then one 2x upsampling block per further entry, so the output is 4 x 2^(len-1) px and must equal the data's resolution (32 px: four entries)"})
    # --- discriminator: projection on the text -------------------------------------------------------
    d_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 128], metadata={"arch": True, "ge": 1, "doc": "discriminator widths: a 3x3 convolution at full resolution, then one stride-2 convolution per further entry, down to 4x4 (the same length rule as g_channels)"})
    d_dropout: float = field(default=0.3, metadata={"ge": 0, "lt": 1, "doc": "dropout after every discriminator activation in training (seed: 0.3)"})
    aux_weight: float = field(default=1.0, metadata={"ge": 0, "doc": "auxiliary attribute classifier (AC-GAN, Odena et al. 2017; not in the seed): D also predicts each attribute of a real sprite from its features (cross-entropy, unknown ids ignored), and the generator's loss adds the same cross-entropy of its fakes against the attributes it was asked for, times this weight. The projection term alone left the prompt's colour and type nearly unread in our 5-minute runs (docs/gan.md). 0: off"})
    mode_seeking: float = field(default=1.0, metadata={"ge": 0, "doc": "mode-seeking term (MSGAN, Mao et al. 2019; not in the seed): each generator step draws half its conditions twice, with two noises, and adds this weight times 1 / (mean |x1 - x2| / mean |z1 - z2|), so noise that changes nothing in the image costs. Without it the default run drew one silhouette for every seed (the spread warning on 29 of 40 epochs, fd 0.243, coverage 0.72); with 1: no warning, fd 0.115, coverage 0.88 (docs/gan.md). 0: off"})
    d_minibatch_std: int = field(default=4, metadata={"arch": True, "ge": 0, "doc": "minibatch standard deviation (Karras et al. 2018): D's last block also sees the spread of its features across groups of this many samples, so a generator that draws one image for every noise and prompt is visible to it (0: off; not in the seed)"})
    # --- optional NCA refinement ------------------------------------------------------------------------
    nca: bool = field(default=False, metadata={"arch": True, "doc": "refine the synthesised image with a neural cellular automaton whose update reads each cell's 3x3 neighbourhood and w (seed 002's NCA); its alive ratio is logged"})
    nca_channels: int = field(default=16, metadata={"arch": True, "ge": 5, "doc": "NCA state channels: RGB, alive, and hidden ones"})
    nca_hidden: int = field(default=128, metadata={"arch": True, "ge": 1, "doc": "width of the update network (seed: 128)"})
    nca_steps: int = field(default=8, metadata={"ge": 1, "doc": "NCA update steps per image"})
    nca_fire_rate: float = field(default=0.5, metadata={"gt": 0, "le": 1, "doc": "share of cells updated per step in training (stochastic update); in evaluation every cell takes the expected update, so generation needs no random draws"})
    nca_dropout: float = field(default=0.1, metadata={"ge": 0, "lt": 1, "doc": "dropout in the update network (seed: 0.1)"})
    # --- optional transformer critic with the isolation schedule --------------------------------------
    critic: bool = field(default=False, metadata={"arch": True, "doc": "a small text-conditioned transformer critic beside the discriminator, on seed 002's isolation schedule"})
    critic_patch: int = field(default=4, metadata={"arch": True, "ge": 1, "doc": "critic patch size (pixels)"})
    critic_width: int = field(default=64, metadata={"arch": True, "ge": 8, "doc": "critic token width"})
    critic_layers: int = field(default=2, metadata={"arch": True, "ge": 1, "doc": "critic transformer layers"})
    critic_heads: int = field(default=4, metadata={"arch": True, "ge": 1, "doc": "critic attention heads"})
    critic_isolated_epochs: float = field(default=10.0, metadata={"ge": 0, "doc": "phase 1, 'isolated': the critic trains on detached images and its output reaches no other model (seed: 200 epochs)"})
    critic_isolation_epochs: float = field(default=5.0, metadata={"ge": 0, "doc": "phase 2, 'isolation' (the seed's isolation period): the critic is frozen and still reaches no model; its accuracy on the moving generator is logged before it is trusted (seed: 50 epochs)"})
    critic_ramp_epochs: float = field(default=10.0, metadata={"ge": 0, "doc": "phase 3, 'ramp': the critic trains again and its weight in the generator's loss rises linearly from 0 to critic_weight; then 'integrated' (seed: gradual integration after epoch 250)"})
    critic_weight: float = field(default=0.5, metadata={"ge": 0, "doc": "the critic's weight in the generator's loss once integrated"})
    # --- loss and regularisation: the seed's fixes ---------------------------------------------------------
    loss: Literal["hinge", "wgan", "nonsaturating"] = field(default="nonsaturating", metadata={"doc": "adversarial loss: nonsaturating (the seed's BCE, where label smoothing applies), hinge, or wgan (pair it with penalty wgan-gp)"})
    penalty: Literal["wgan-gp", "r1", "none"] = field(default="r1", metadata={"doc": "discriminator gradient penalty: wgan-gp ((|grad D(x_hat)| - 1)^2 on real/fake interpolates, the seed's), r1 (|grad D(x_real)|^2, Mescheder et al. 2018; one double-backward on the reals only), none"})
    penalty_weight: float = field(default=0.1, metadata={"ge": 0, "doc": "lambda of wgan-gp (seed: 10) or gamma of r1 (the loss adds gamma/2 |grad|^2). With r1 at gamma 10 (with dropout, noise, smoothing and full DiffAugment) D stayed at chance for all 40 epochs and the generator learned nothing of the prompt; gamma 0.1 is near StyleGAN2-ADA's 0.01 for 32 px (docs/gan.md)"})
    penalty_every: int = field(default=4, metadata={"ge": 1, "doc": "lazy regularisation (Karras et al. 2020): the penalty on every k-th D step only, multiplied by k. Its double backward adds about half to a D step's time on the CPU (docs/gan.md)"})
    label_smoothing: float = field(default=0.9, metadata={"gt": 0, "le": 1, "doc": "one-sided label smoothing: the real target of the nonsaturating loss (seed: 0.9; 1: off). Hinge and wgan have no labels: it does not apply to them"})
    instance_noise: float = field(default=0.05, metadata={"ge": 0, "doc": "std of Gaussian noise added to the discriminator's inputs (seed: 0.05, on [-1, 1] images)"})
    instance_noise_on: Literal["real", "both"] = field(default="both", metadata={"doc": "both (Sonderby et al. 2017: real and fake, so the noise itself tells D nothing) or real (the seed's code: reals only)"})
    instance_noise_decay_epochs: float = field(default=0.0, metadata={"ge": 0, "doc": "0: constant; N: linear decay to 0 over the first N epochs"})
    diffaugment: str = field(default="translation", metadata={"doc": "DiffAugment (Zhao et al. 2020) on everything the discriminator sees, real and fake, in both steps: a comma list of color, translation, cutout; '' is off. The default keeps translation only: colour jitter hides the very colour a prompt names from D, and in 40 epochs D does not overfit 800 sprites (docs/gan.md)"})
    # --- schedules ------------------------------------------------------------------------------------------
    d_steps_early: int = field(default=3, metadata={"ge": 1, "doc": "discriminator steps per generator step before d_steps_boundary (seed: 3)"})
    d_steps_late: int = field(default=2, metadata={"ge": 1, "doc": "discriminator steps per generator step from d_steps_boundary on (seed: 2)"})
    d_steps_boundary: int = field(default=10, metadata={"ge": 0, "doc": "the epoch (0-based) where d_steps_late takes over (seed: 100 of hundreds)"})
    curriculum: list[list[int]] = field(default_factory=list, metadata={"doc": "progressive curriculum: [[epoch, resolution], ...] ascending; from each epoch on, the discriminator compares real and fake images average-pooled to that resolution (coarse shapes first). [] is off (full resolution throughout)"})
    # --- training ---------------------------------------------------------------------------------------------
    epochs: int = field(default=40, metadata={"ge": 1})
    batch_size: int = field(default=32, metadata={"ge": 1, "doc": "real images per discriminator step; an epoch is one pass of the training sprites through D"})
    lr_g: float = field(default=2e-4, metadata={"gt": 0, "doc": "generator (mapping + synthesis) Adam rate. The seed's 5e-5 went with hundreds of epochs on a GPU; the default run makes about 470 generator steps (40 epochs of 26 D steps, 3 then 2 D steps per G step), so it takes the usual 2e-4, and the seed's 1:4 balance with the discriminator becomes TTUR's 1:2 (Heusel et al. 2017). The seed's own values (gan_seed_fixes, one seed) gave the lowest fd of any run but colour lift +0.087 against the default's +0.20 (docs/gan.md, ablation)"})
    lr_d: float = field(default=4e-4, metadata={"gt": 0, "doc": "discriminator Adam rate (seed: 2e-4); faster than the generator's, as the seed and TTUR both have it"})
    lr_nca: float = field(default=5e-5, metadata={"gt": 0, "doc": "NCA Adam rate (seed: 2e-5, 10x below its generator): a quarter of lr_g, the seed's 1:2.5 ratio rounded, scaled with lr_g"})
    lr_critic: float = field(default=2e-4, metadata={"gt": 0, "doc": "transformer critic Adam rate (seed: 1e-4), scaled with lr_d"})
    beta1: float = field(default=0.0, metadata={"ge": 0, "lt": 1, "doc": "Adam beta1 of every optimiser (0: the StyleGAN2 / BigGAN choice; momentum chases a moving adversary)"})
    beta2: float = field(default=0.99, metadata={"ge": 0, "lt": 1, "doc": "Adam beta2"})
    grad_clip: float = field(default=10.0, metadata={"gt": 0, "doc": "gradient-norm limit of each network (the step guard's explosion check uses the norms before clipping)"})
    explode_factor: float = field(default=1000.0, metadata={"gt": 1, "doc": "the GAN's step guards skip a step whose gradient norm exceeds this many times the running median (replaces train.explode_factor here). A GAN's gradient scale moves by orders of magnitude when D and G trade places; with the shared 50 the first default run skipped every step once it moved and stopped at epoch 23 (docs/gan.md). NaN/Inf steps are skipped whatever this is"})
    # --- collapse watched while training ----------------------------------------------------------------------
    monitor_size: int = field(default=64, metadata={"ge": 2, "doc": "fixed noise x fixed prompts generated every epoch for the collapse monitor (and as many fixed real sprites as its reference)"})
    collapse_min_unique_share: float = field(default=0.10, metadata={"ge": 0, "le": 1, "doc": "warn below this share of unique RGB values among the monitor batch's pixels (seed's target: > 10%; the seed's collapsed GAN had 0.05%)"})
    collapse_min_span: float = field(default=0.5, metadata={"ge": 0, "le": 1, "doc": "warn unless the raw output reaches below -span and above +span (seed's check: outputs span -0.5..0.5 at least; its collapse: 0.043..0.102)"})
    collapse_min_spread: float = field(default=0.5, metadata={"ge": 0, "doc": "warn when the spread across samples (channel_std) is below this share of the real sprites' (the rubric's 0-point edge). The first default run drew one noisy image for every prompt and seed: its unique-pixel share and value range looked healthy, only the spread saw it (docs/gan.md)"})
    collapse_max_score: int = field(default=4, metadata={"ge": 0, "le": 15, "doc": "warn when the training collapse score (the evaluation rubric's pixel indicators; the feature-space points count 0, so it is a lower bound of the evaluation's score) exceeds this (seed: healthy < 5 of 15)"})
    collapse_patience: int = field(default=0, metadata={"ge": 0, "doc": "stop after this many consecutive collapsed epochs (any warning above), keeping the last healthy epoch as best/ (0: never stop)"})

    def validate(self) -> None:
        if len(self.g_channels) < 2 or len(self.d_channels) < 2:
            raise ConfigError("g_channels/d_channels: at least two entries (a 4x4 stage and one 2x stage)")
        bad = [p for p in self.augment_policies if p not in DIFFAUGMENT_POLICIES]
        if bad:
            raise ConfigError(f"diffaugment: unknown polic{'ies' if len(bad) > 1 else 'y'} {bad}; known: {list(DIFFAUGMENT_POLICIES)} (comma-separated, '' for off)")
        last = -1
        for i, pair in enumerate(self.curriculum):
            if len(pair) != 2:
                raise ConfigError(f"curriculum[{i}]: expected [epoch, resolution], got {pair}")
            e, r = pair
            if e <= last:
                raise ConfigError(f"curriculum[{i}]: epochs must ascend, got {e} after {last}")
            if r < 4 or r & (r - 1):
                raise ConfigError(f"curriculum[{i}]: resolution {r} is not a power of two >= 4")
            last = e

    @property
    def resolution(self) -> int:
        """The generator's output size implied by g_channels."""
        return 4 * 2 ** (len(self.g_channels) - 1)

    @property
    def augment_policies(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.diffaugment.split(",") if p.strip())

    def check_resolution(self, resolution: int) -> None:
        """The data's resolution must be the one g_channels and d_channels build; an error naming both."""
        for key, widths in (("g_channels", self.g_channels), ("d_channels", self.d_channels)):
            built = 4 * 2 ** (len(widths) - 1)
            if built != resolution:
                need = int(math.log2(max(resolution, 4) / 4)) + 1
                raise ConfigError(f"gan.{key}: {len(widths)} entries build {built} px images but the data is {resolution} px "
                                  f"(give {need} entries)")
        for e, r in self.curriculum:
            if r > resolution:
                raise ConfigError(f"gan.curriculum: resolution {r} (from epoch {e}) exceeds the data's {resolution} px")
