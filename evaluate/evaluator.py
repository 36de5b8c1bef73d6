"""The dataset evaluator: a small CLIP (open_clip's architecture) trained contrastively on the train split.

    spritegen evaluator [--data data/prepared] [--out models/evaluator] [--preset ci]

It is the offline feature space for FD/KID/PRDC, CLIP score, R-precision and zero-shot attribute
accuracy when no pretrained Inception/CLIP weights are on the machine. It is *only* used to score, never
to train a generator. Because it is weak, it reports its own worth on held-out real sprites (val + test,
never seen in training): image→text and text→image recall@1/@5 with their chance levels, and zero-shot
colour/type accuracy with chance. After the contrastive training it fits the attribute classifiers
(evaluate/attributes.py: primary type and primary colour, linear probes on the train split) and reports
them next to the zero-shot calls: accuracy, balanced accuracy, per-class recall and confusion matrices on
the held-out sprites. Writes:

    models/evaluator/model.safetensors   weights ("clip.*", the classifiers "attr.*")
    models/evaluator/config.yaml         the resolved evaluator section (rebuilds the model)
    models/evaluator/metrics.json        its retrieval and zero-shot scores (+ loss curve), device, threads
    metrics/evaluator.json               the same scores, git-tracked, for `dvc metrics show`
    models/evaluator/confusion.png       held-out confusion matrices: classifiers and zero-shot calls
    logs/evaluator.json                  the training time (git-ignored: it changes from run to run)
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from spritegen.checkpoint import load_config, load_into, load_tensors, save_checkpoint
from spritegen.config import ConfigError, from_dict, to_dict
from spritegen.data.vocab import COLOUR_NAMES, TYPES

# Zero-shot class prompts (also used by the suite), ensembled as in CLIP: the class embedding is the
# normalised mean of the templates' embeddings. They follow the data's prompt styles ("a green grass type
# Pokémon", "green grass pokemon").
COLOUR_TEMPLATES = ("a {} Pokémon", "a {} pokemon", "mostly {}")
TYPE_TEMPLATES = ("a {} type Pokémon", "a {} type pokemon", "{} type")


def class_embeddings(encode_texts, names, templates) -> np.ndarray:
    """(len(names), D): per class, the normalised mean of its templates' normalised embeddings."""
    emb = encode_texts([t.format(n) for n in names for t in templates]).reshape(len(names), len(templates), -1)
    emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
    mean = emb.mean(1)
    return mean / np.linalg.norm(mean, axis=-1, keepdims=True)


@dataclass
class EvaluatorConfig:
    image_size: int = field(default=32, metadata={"ge": 8, "doc": "images are resized to this (square) before the image tower"})
    patch_size: int = field(default=4, metadata={"ge": 1, "doc": "ViT patch size (image_size must be a multiple)"})
    vision_layers: int = field(default=4, metadata={"ge": 1, "doc": "ViT blocks"})
    vision_width: int = field(default=192, metadata={"ge": 8, "doc": "ViT width"})
    vision_head_width: int = field(default=64, metadata={"ge": 8, "doc": "ViT attention head width (width / heads)"})
    vision_mlp_ratio: float = field(default=2.0, metadata={"gt": 0, "doc": "ViT MLP hidden width / width; 2 (not CLIP's 4) scored at least as well on 3 seeds with 0.73 of the compute (docs/evaluation.md)"})
    text_layers: int = field(default=3, metadata={"ge": 1, "doc": "text transformer blocks"})
    text_width: int = field(default=128, metadata={"ge": 8, "doc": "text transformer width"})
    text_heads: int = field(default=4, metadata={"ge": 1, "doc": "text attention heads"})
    context_length: int = field(default=32, metadata={"ge": 8, "le": 77, "doc": "prompt tokens (open_clip BPE, offline)"})
    embed_dim: int = field(default=128, metadata={"ge": 8, "doc": "joint embedding size = the feature dimension of FD/KID"})
    epochs: int = field(default=12, metadata={"ge": 1, "doc": "passes over the train split (docs/evaluation.md: 12 at batch 32 scored at least like 16 at batch 64, on 3 seeds)"})
    batch_size: int = field(default=32, metadata={"ge": 2, "doc": "contrastive batch (negatives per positive = batch - 1); on a CPU a sample costs the same at 32 as at 64, so 32 gives twice the updates per epoch"})
    lr: float = field(default=7e-4, metadata={"gt": 0, "doc": "AdamW peak learning rate (cosine decay after warm-up); 2e-3 collapsed the embeddings at batch 32-128, 1e-3 at batch 32 learned less"})
    weight_decay: float = field(default=0.1, metadata={"ge": 0, "doc": "AdamW weight decay"})
    warmup_fraction: float = field(default=0.05, metadata={"ge": 0, "le": 1, "doc": "share of steps with linear warm-up"})
    hflip: bool = field(default=True, metadata={"doc": "random horizontal flips (prompts never say left/right)"})
    seed: int = field(default=0, metadata={"ge": 0, "doc": "seeds initialisation, batches, prompt choice, flips"})
    threads: int = field(default=2, metadata={"ge": 0, "doc": "torch CPU threads (0: leave as is, not pinned). The README's numbers were made with 2 (the 2-core machine); another count changes the last bits of the weights and so of every score"})
    device: str = field(default="auto", metadata={"doc": "where training runs: auto (cuda when available, else cpu) | cpu | cuda; never mps. The weights (and so backend_id) differ in the last bits between devices; scoring always runs on the CPU"})
    attr_type_inputs: Literal["pixels", "pixels+evaluator"] = field(default="pixels+evaluator", metadata={"doc": "what the primary-type classifier reads: foreground pixel statistics, and optionally the evaluator's image embedding (evaluate/attributes.py); chosen by 5-fold species-grouped cross-validation on the train split"})
    attr_colour_inputs: Literal["pixels", "pixels+evaluator"] = field(default="pixels", metadata={"doc": "what the primary-colour classifier reads; the embedding lowered cross-validated colour accuracy (0.85 vs 0.86)"})
    attr_type_l2: float = field(default=0.04, metadata={"ge": 0, "doc": "L2 penalty of the type classifier (on the class-balanced mean cross-entropy); from the cross-validation"})
    attr_colour_l2: float = field(default=0.01, metadata={"ge": 0, "doc": "L2 penalty of the colour classifier"})
    attr_max_iter: int = field(default=300, metadata={"ge": 1, "doc": "L-BFGS iterations of each classifier (full batch, float64)"})

    def validate(self) -> None:
        from spritegen.repro import check_device_param

        check_device_param(self.device, "device")
        if self.image_size % self.patch_size:
            raise ConfigError(f"patch_size: {self.patch_size} must divide image_size {self.image_size}")
        if self.vision_width % self.vision_head_width:
            raise ConfigError(f"vision_head_width: {self.vision_head_width} must divide vision_width {self.vision_width}")
        if self.text_width % self.text_heads:
            raise ConfigError(f"text_heads: {self.text_heads} must divide text_width {self.text_width}")


UNK = 1  # compact id of a BPE token never seen in training (0 stays the padding id)


def build_vocab(prompts: list[str], context_length: int) -> torch.Tensor:
    """Map open_clip's 49,408 BPE ids to a compact vocabulary of the tokens the prompts use.

    A token embedding row is only trained when its token occurs, so rows of unseen tokens are noise;
    dropping them shrinks the text tower from 6.3 M to a few hundred thousand parameters and makes a
    training step several times faster on a CPU. The map keeps the order of ids, so the end-of-text token
    (the largest BPE id, which open_clip's ``argmax`` pooling looks for) stays the largest compact id.
    Returns ``id_map`` (49408,) int64: compact id per BPE id (0 padding, ``UNK`` unseen)."""
    import open_clip

    tok = open_clip.SimpleTokenizer(context_length=context_length)
    templates = [t.format(c) for c in COLOUR_NAMES for t in COLOUR_TEMPLATES] + \
        [t.format(n) for n in TYPES for t in TYPE_TEMPLATES]
    used = torch.unique(tok(list(prompts) + templates))
    used = used[used > 0]
    id_map = torch.full((tok.vocab_size,), UNK, dtype=torch.int64)
    id_map[0] = 0
    id_map[used] = torch.arange(2, 2 + len(used))
    return id_map


def build_clip(cfg: EvaluatorConfig, vocab_size: int):
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    vision = CLIPVisionCfg(layers=cfg.vision_layers, width=cfg.vision_width, head_width=cfg.vision_head_width,
                           mlp_ratio=cfg.vision_mlp_ratio, patch_size=cfg.patch_size, image_size=cfg.image_size)
    text = CLIPTextCfg(context_length=cfg.context_length, vocab_size=vocab_size, width=cfg.text_width,
                       heads=cfg.text_heads, layers=cfg.text_layers)
    return open_clip.CLIP(embed_dim=cfg.embed_dim, vision_cfg=vision, text_cfg=text)


def preprocess(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float (B, 3, size, size) in [-1, 1] (antialiased resize)."""
    x = images.float() / 127.5 - 1
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


class Evaluator:
    """A trained evaluator: encode images and prompts into the joint, L2-normalised space."""

    def __init__(self, model, cfg: EvaluatorConfig, id_map: torch.Tensor, weights_hash: str = "", attributes=None):
        import open_clip

        self.model = model.eval()
        self.attributes = attributes  # attributes.AttributeClassifiers, or None (trained before they existed)
        self.cfg = cfg
        self.id_map = id_map
        self.bpe = open_clip.SimpleTokenizer(context_length=cfg.context_length)
        self.backend_id = f"evaluator-{weights_hash[:8]}" if weights_hash else "evaluator-untrained"

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> compact token ids (B, context_length)."""
        return self.id_map[self.bpe(prompts)]

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor | np.ndarray, batch_size: int = 256) -> np.ndarray:
        images = torch.as_tensor(images)
        out = [self.model.encode_image(preprocess(images[s : s + batch_size], self.cfg.image_size), normalize=True)
               for s in range(0, len(images), batch_size)]
        return torch.cat(out).double().numpy() if out else np.zeros((0, self.cfg.embed_dim))

    @torch.no_grad()
    def encode_texts(self, prompts: list[str], batch_size: int = 512) -> np.ndarray:
        out = [self.model.encode_text(self.tokenize(prompts[s : s + batch_size]), normalize=True)
               for s in range(0, len(prompts), batch_size)]
        return torch.cat(out).double().numpy() if out else np.zeros((0, self.cfg.embed_dim))

    @torch.no_grad()
    def encode_images_with_tokens(self, images: torch.Tensor | np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """``(encode_images(x), image_tokens(x))`` in one forward pass.

        The tokens are the LPIPS-like fallback features: the patch tokens of every ViT block, each token
        unit-normalised over channels, concatenated and scaled so that the squared Euclidean distance
        between two rows is the mean over blocks and tokens of the squared token difference (LPIPS
        without learned weights)."""
        images = torch.as_tensor(images)
        n_blocks = self.cfg.vision_layers
        embs, toks = [], []
        for s in range(0, len(images), batch_size):
            x = preprocess(images[s : s + batch_size], self.cfg.image_size)
            out = self.model.visual.forward_intermediates(x, indices=n_blocks, output_fmt="NLC")
            embs.append(F.normalize(out["image_features"], dim=-1))  # == model.encode_image(x, normalize=True)
            feats = []
            for t in out["image_intermediates"]:  # (B, T, W) per block
                t = F.normalize(t, dim=-1)
                feats.append(t.flatten(1) / math.sqrt(t.shape[1] * n_blocks))
            toks.append(torch.cat(feats, 1).float())
        if not embs:
            return np.zeros((0, self.cfg.embed_dim)), np.zeros((0, 0), np.float32)
        return torch.cat(embs).double().numpy(), torch.cat(toks).numpy()

    def classify_attributes(self, images: torch.Tensor | np.ndarray, embedding: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The attribute classifiers' calls: {"type": (N,) index into TYPES, "colour": (N,) into COLOUR_NAMES}.
        ``embedding``: these images' ``encode_images`` rows when the caller has them already."""
        if self.attributes is None:
            from spritegen.errors import UserError

            raise UserError(f"evaluator {self.backend_id} has no attribute classifiers (it was trained before they "
                            "existed): retrain it with `spritegen evaluator` (or `dvc repro evaluator`)")
        return self.attributes.classify(images, self.encode_images(images) if embedding is None else embedding)

    def image_tokens(self, images: torch.Tensor | np.ndarray, batch_size: int = 256) -> np.ndarray:
        """The perceptual-fallback embedding (float32); see ``encode_images_with_tokens``."""
        return self.encode_images_with_tokens(images, batch_size)[1]


def file_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_evaluator(folder: str | Path) -> Evaluator:
    """Rebuild the evaluator from ``config.yaml`` and load ``model.safetensors`` (never unpickles)."""
    folder = Path(folder)
    raw = load_config(folder)
    cfg = from_dict(EvaluatorConfig, raw.get("evaluator", raw), "evaluator")
    tensors = load_tensors(folder / "model.safetensors")
    if "vocab.id_map" not in tensors:
        from spritegen.errors import UserError

        raise UserError(f"{folder / 'model.safetensors'} has no 'vocab.id_map': not an evaluator checkpoint")
    id_map = tensors["vocab.id_map"]
    model = build_clip(cfg, int(id_map.max()) + 1)
    load_into(model, tensors, "clip", folder / "model.safetensors")
    attributes = None
    if any(k.startswith("attr.") for k in tensors):  # absent from an evaluator trained before the classifiers
        from spritegen.checkpoint import unflatten_state
        from spritegen.evaluate.attributes import AttributeClassifiers

        inputs = {"type": cfg.attr_type_inputs, "colour": cfg.attr_colour_inputs}
        attributes = AttributeClassifiers.from_tensors(unflatten_state(tensors, "attr"), inputs)
    return Evaluator(model, cfg, id_map, file_hash(folder / "model.safetensors"), attributes)


def save_evaluator(ev: Evaluator, folder: str | Path) -> None:
    modules = {"clip": ev.model, "vocab": {"id_map": ev.id_map}}
    if ev.attributes is not None:  # in the same file, so backend_id names the classifiers too
        modules["attr"] = ev.attributes.tensors()
    save_checkpoint(folder, modules, {"evaluator": to_dict(ev.cfg)})


def fit_attributes(ev: Evaluator, images: torch.Tensor, records: list) -> None:
    """Train the attribute classifiers on (train) sprites with ``ev``'s frozen image embedding; attach them."""
    from spritegen.evaluate.attributes import train_classifiers

    cfg = ev.cfg
    ev.attributes = train_classifiers(images, ev.encode_images(images), records,
                                      {"type": cfg.attr_type_inputs, "colour": cfg.attr_colour_inputs},
                                      {"type": cfg.attr_type_l2, "colour": cfg.attr_colour_l2}, cfg.attr_max_iter)


# --- training ---------------------------------------------------------------------------------------


def train_clip(cfg: EvaluatorConfig, images: torch.Tensor, prompts: list[tuple[str, ...]],
               generator: torch.Generator, log=print, device: str | torch.device = "cpu") -> tuple[Evaluator, list[float]]:
    """Contrastive training (symmetric InfoNCE) on (image, prompt) pairs; one random prompt of each
    sprite per epoch. ``images`` uint8 (N, 3, R, R). Returns the (unsaved) evaluator, on the CPU, and
    the per-epoch mean loss.

    Training runs on ``device``: the model, the resized images and the tokens move there once. Every
    random draw (initialisation, batches, prompt choice, flips) comes from the CPU ``generator``, so the
    batches are the same whatever the device; only floating-point summation order differs."""
    device = torch.device(device)
    flat = [p for ps in prompts for p in ps]
    id_map = build_vocab(flat, cfg.context_length)
    # open_clip initialises from torch's global RNG: seed it from our generator inside a fork, so the
    # weights depend only on `generator` and the caller's global RNG state is left untouched
    init_seed = int(torch.randint(2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = build_clip(cfg, int(id_map.max()) + 1)
    ev = Evaluator(model, cfg, id_map)
    model.to(device)
    x_all = preprocess(images, cfg.image_size).to(device)  # (N, 3, S, S), resized once, on the CPU
    tokens = ev.tokenize(flat).to(device)  # (P, L), every prompt tokenised once
    n = len(x_all)
    bs = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // bs)  # drop the last partial batch: fewer negatives would skew the loss
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, int(total * cfg.warmup_fraction))
    # fused: one kernel for all parameters instead of ~10 small ops per tensor (cpu and cuda alike)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))
    counts = torch.tensor([len(ps) for ps in prompts])  # prompts per sprite
    offsets = torch.cumsum(counts, 0) - counts  # (N,) index of each sprite's first prompt in `tokens`
    target = torch.arange(bs, device=device)
    losses = []
    model.train()
    for epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=generator)
        choice = torch.rand(n, generator=generator)
        flips = torch.rand(n, generator=generator) < (0.5 if cfg.hflip else 0.0)
        tok_of = (offsets + (choice * counts).long()).to(device)  # (N,) the prompt drawn for each sprite
        flips = flips.to(device)
        epoch_loss = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device: no sync per step
        for step in range(steps_per_epoch):
            idx = perm[step * bs : (step + 1) * bs].to(device)
            x = x_all[idx]  # (B, 3, S, S)
            x = torch.where(flips[idx][:, None, None, None], x.flip(-1), x)
            img = model.encode_image(x, normalize=True)  # (B, E)
            txt = model.encode_text(tokens[tok_of[idx]], normalize=True)  # (B, E)
            logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T  # (B, B)
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            epoch_loss += loss.detach()
        losses.append(float(epoch_loss) / steps_per_epoch)
        if log and (epoch % max(1, cfg.epochs // 10) == 0 or epoch == cfg.epochs - 1):
            log(f"evaluator epoch {epoch + 1}/{cfg.epochs} loss {losses[-1]:.4f}")
    model.cpu().eval()
    return ev, losses


# --- its own worth ----------------------------------------------------------------------------------

def self_scores(ev: Evaluator, images: torch.Tensor, records: list, rng: np.random.Generator) -> dict:
    """Retrieval and zero-shot accuracy on held-out real sprites (one prompt per sprite, drawn by rng)."""
    from spritegen.evaluate.metrics import retrieval_recall, zero_shot_predict

    prompts = [r.prompts[int(rng.integers(len(r.prompts)))] for r in records]
    img = ev.encode_images(images)
    txt = ev.encode_texts(prompts)
    out = {"n_heldout": len(records)}
    out.update(retrieval_recall(img, txt, ks=(1, 5)))
    colour_pred = zero_shot_predict(img, class_embeddings(ev.encode_texts, COLOUR_NAMES, COLOUR_TEMPLATES))
    colour_true = np.array([COLOUR_NAMES.index(r.primary_colour) for r in records])
    out["zero_shot_colour_acc"] = float((colour_pred == colour_true).mean())
    out["zero_shot_colour_chance"] = 1 / len(COLOUR_NAMES)
    counts = np.bincount(colour_true, minlength=len(COLOUR_NAMES))
    out["zero_shot_colour_majority"] = float(counts.max() / len(records))
    type_pred = zero_shot_predict(img, class_embeddings(ev.encode_texts, TYPES, TYPE_TEMPLATES))
    out["zero_shot_type_acc"] = float(np.mean([TYPES[p] in r.types for p, r in zip(type_pred, records)]))
    out["zero_shot_type_chance"] = float(np.mean([len(r.types) / len(TYPES) for r in records]))
    if ev.attributes is not None:
        out.update(attribute_scores(ev.classify_attributes(images, img), {"type": type_pred, "colour": colour_pred}, records))
    return out


def attribute_scores(classifier: dict[str, np.ndarray], zero_shot: dict[str, np.ndarray], records: list) -> dict:
    """The classifiers' and the zero-shot calls' held-out reports (evaluate/attributes.py: class_report),
    against each sprite's primary type / primary colour, plus headline numbers for `dvc metrics show`.

    ``classifier_type_acc_any`` counts a call of any of the sprite's types as right, which is how
    ``zero_shot_type_acc`` is defined: compare those two; ``classifier_type_acc`` is the stricter one."""
    from spritegen.evaluate.attributes import CLASSES, class_report, record_label

    reports = {}
    for a, classes in CLASSES.items():
        true = np.array([record_label(r, a) for r in records])
        reports[a] = {"classifier": class_report(true, classifier[a], classes),
                      "zero_shot": class_report(true, zero_shot[a], classes)}
    out = {"attributes": reports}
    for a in CLASSES:
        rep = reports[a]["classifier"]
        out[f"classifier_{a}_acc"] = rep["acc"]
        out[f"classifier_{a}_balanced_acc"] = rep["balanced_acc"]
        out[f"classifier_{a}_never_named"] = len(rep["never_named"])
        out[f"zero_shot_{a}_never_named"] = len(reports[a]["zero_shot"]["never_named"])
    out["classifier_type_acc_any"] = float(np.mean([TYPES[p] in r.types for p, r in zip(classifier["type"], records)]))
    return out


def main(args) -> int:
    from spritegen.data.dataset import load_split
    from spritegen.io import write_json
    from spritegen.params import load_section
    from spritegen.runlog import log_run
    from spritegen.repro import reproducible, resolve_device
    from spritegen.runtime import seed_everything

    cfg: EvaluatorConfig = load_section("evaluator", args.params, args.preset)
    run = reproducible(cfg.threads)  # {"threads", "deterministic"}: recorded with the scores
    device = resolve_device(cfg.device, "evaluator.device")
    train = load_split(args.data, "train")
    heldout = [load_split(args.data, s) for s in ("val", "test")]
    if len(train) < 2:
        from spritegen.errors import UserError

        raise UserError(f"{args.data}: the train split has {len(train)} sprites; the evaluator needs at least 2")
    g = seed_everything(cfg.seed)
    t0 = time.perf_counter()
    trained, losses = train_clip(cfg, train.images, [r.prompts for r in train.records], g, device=device)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    fit_attributes(trained, train.images, train.records)  # the train split only; no random draw
    attributes_s = time.perf_counter() - t1
    out = Path(args.out)
    save_evaluator(trained, out)
    ev = load_evaluator(out)  # score exactly what was saved (on the CPU, whatever trained it)
    images = torch.cat([s.images for s in heldout])
    records = [r for s in heldout for r in s.records]
    scores = self_scores(ev, images, records, np.random.default_rng(cfg.seed))
    # only what the same commit reproduces bit for bit goes here; the wall-clock time goes to logs/
    scores.update({"backend_id": ev.backend_id, "n_train": len(train), "final_loss": losses[-1],
                   "chance_loss": math.log(min(cfg.batch_size, len(train))), "device": device.type, **run})
    write_json({**scores, "loss_per_epoch": losses}, out / "metrics.json")
    write_json(scores, Path(getattr(args, "metrics_file", None) or "metrics/evaluator.json"))
    from spritegen.evaluate.attributes import save_confusion_plot

    save_confusion_plot({f"{a} {kind}": scores["attributes"][a][kind] for a in ("type", "colour")
                         for kind in ("classifier", "zero_shot")}, out / "confusion.png")
    log_run("evaluator", {"train_seconds": round(train_s, 1), "attributes_seconds": round(attributes_s, 1),
                          "epochs": cfg.epochs, "device": device.type,
                          "threads": run["threads"], "backend_id": ev.backend_id})
    print(f"evaluator {ev.backend_id}: trained {train_s:.0f}s on {len(train)} sprites ({device.type}, {run['threads']} threads); "
          f"held-out ({len(records)}): "
          f"R@1 {scores['i2t_r@1']:.3f} R@5 {scores['i2t_r@5']:.3f} (chance {scores['chance_r@1']:.3f}/{scores['chance_r@5']:.3f}), "
          f"colour {scores['zero_shot_colour_acc']:.2f} (chance {scores['zero_shot_colour_chance']:.2f}), "
          f"type {scores['zero_shot_type_acc']:.2f} (chance {scores['zero_shot_type_chance']:.2f}); "
          f"classifiers ({attributes_s:.1f}s): colour {scores['classifier_colour_acc']:.2f} "
          f"(balanced {scores['classifier_colour_balanced_acc']:.2f}), type {scores['classifier_type_acc']:.2f} "
          f"(balanced {scores['classifier_type_balanced_acc']:.2f}, any of its types {scores['classifier_type_acc_any']:.2f})")
    return 0
