"""Named presets: overrides applied on top of params.yaml.

* ``default``: params.yaml as it is (sized for a 2-core CPU: 32 px sprites, the whole pipeline in minutes).
* ``ci``: the profile the quality gate runs (about 7 minutes on 2 idle cores, deterministic on the CPU).
* ``gpu``: one modern GPU (unmeasured: written without a GPU at hand).
* ``tiny``: seconds, for tests. Its numbers mean nothing; it only exercises every code path.

Write one to a file with ``spritegen params --preset ci > params.yaml``.
"""

from __future__ import annotations

from spritegen.config import ConfigError

PRESETS: dict[str, dict] = {
    "default": {},
    "ci": {
        # the default at a third of the data: 256 training sprites at 32 px (8x VAE -> 4x4x8 latents)
        "metadata": {"limit": 320},
        "text": {"mlm_epochs": 3, "hidden_size": 128, "num_layers": 2, "num_heads": 4},
        "ldm": {"stage_epochs": {"vae": 60, "unet": 80, "finetune": 1}},  # about the default's steps: 1,920 + 1,280
        # the default sampler, steps and guidance (dpm++sde, 25, 5) on fewer prompts
        "sample": {"n_heldout_prompts": 32, "n_train_prompts": 16, "seeds_per_prompt": 2},
        # evaluation: one fixed thread so CPU numbers are identical per commit (and a shared 2-core
        # runner is not slowed by thread contention)
        "evaluator": {"epochs": 15, "threads": 1},
        "evaluate": {"bootstrap": 50, "threads": 1},
    },
    "gpu": {
        # One modern GPU (an H100/H200 class card). UNMEASURED: no GPU was lent while it was written, so
        # its speed and quality are not known; benchmarks/bench_train.py --preset gpu prints the first.
        # bf16 autocast and TF32 for the matmuls, batches large enough to keep the card busy (the 2-core
        # default's 16/32 leave a GPU waiting on kernel launches), learning rates raised about with the
        # square root of the batch, and more epochs, which the card pays for in minutes.
        "train": {"precision": "bf16", "tf32": True, "channels_last": True},
        "text": {"mlm_batch_size": 256, "mlm_lr": 1.0e-3},
        "vae": {"batch_size": 128, "lr": 6.0e-3},
        "unet": {"batch_size": 256, "lr": 3.0e-3},
        "ldm": {"stage_epochs": {"vae": 300, "unet": 400, "finetune": 4}},
        "sample": {"batch_size": 256},
        "evaluator": {"batch_size": 128, "lr": 1.4e-3, "epochs": 24},
    },
    "tiny": {
        "metadata": {"limit": 48, "prompts_per_sprite": 5},
        "prepare": {"resolution": 16},
        # latent diffusion: 16x16 -> 4x4x4 latents (4x VAE), widths of a few channels: seconds
        "text": {"vocab_size": 200, "hidden_size": 32, "num_layers": 1, "num_heads": 2, "max_length": 16, "mlm_epochs": 1},
        "vae": {"block_out_channels": [8, 8, 8], "norm_num_groups": 4, "batch_size": 8},
        "unet": {"block_out_channels": [16, 32], "norm_num_groups": 8, "attention_head_dim": 8, "batch_size": 8},
        "ldm": {"stage_epochs": {"vae": 1, "unet": 2, "finetune": 1}},
        "train": {"log_every": 2},
        "sample": {"steps": 4, "n_heldout_prompts": 4, "n_train_prompts": 4, "seeds_per_prompt": 1},
        "evaluator": {"image_size": 16, "patch_size": 4, "vision_layers": 1, "vision_width": 32,
                      "vision_head_width": 16, "text_layers": 1, "text_width": 32, "text_heads": 2,
                      "context_length": 16, "embed_dim": 16, "epochs": 1, "batch_size": 16},
        "evaluate": {"bootstrap": 5, "kid_subsets": 5, "max_pairs": 500},
    },
}


def preset_overrides(name: str) -> dict:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
    return PRESETS[name]
