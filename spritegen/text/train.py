"""The ``text`` stage: the tokenizer and text encoder that every family reads (``models/text``).

    spritegen train text [--preset tiny]

Offline (the default): a WordPiece tokenizer fitted to the training prompts and a BERT-mini-sized encoder
pretrained on them by masked language modelling, on ``train.device``. With ``text.pretrained`` set, a
local pretrained encoder is copied instead. Pure text either way: nothing from any image model, so nothing
leaks from the evaluator that scores the generators. Short (tens of seconds on 2 cores), so it does not
checkpoint or resume: a killed run starts again.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from spritegen.checkpoint import save_checkpoint
from spritegen.text.encoder import (SPECIAL_TOKENS, TextConfig, TextEncoder, additive_mask, build_bert, load_pretrained, save_tokenizer,
                                    text_config_dict)
from spritegen.train.guards import StepGuard
from spritegen.train.log import TrainLog
from spritegen.train.optim import adamw, guarded_step, set_lr
from spritegen.train.runtime import Runtime, start

# What the stage reads (dvc.yaml lists the same; tests/test_stage_params.py checks both).
PARAMS = ("train.seed", "train.device", "train.threads", "train.deterministic", "train.precision", "train.tf32",
          "train.max_bad_steps", "train.explode_factor",
          "text.pretrained", "text.vocab_size", "text.hidden_size", "text.num_layers", "text.num_heads", "text.max_length",
          "text.mlm_epochs", "text.mlm_batch_size", "text.mlm_lr", "text.mlm_mask_prob", "text.grad_clip")


def main(args) -> int:
    from spritegen.data.dataset import load_split
    from spritegen.params import load_sections, select, show
    from spritegen.runlog import log_run

    cfgs = load_sections(("train", "text"), args.params, args.preset)
    show("spritegen train text", select(cfgs, PARAMS))
    if args.dry_run:
        return 0
    rt = start(cfgs["train"])
    train, val = load_split(args.data, "train"), load_split(args.data, "val")
    t0 = time.time()
    train_text_stage(cfgs["text"], rt, [p for r in train.records for p in r.prompts],
                     [p for r in val.records for p in r.prompts], Path(args.out), select(cfgs, PARAMS))
    log_run("text", {"seconds": time.time() - t0, **rt.settings()})
    return 0


def train_text_stage(cfg: TextConfig, rt: Runtime, prompts: list[str], val_prompts: list[str], out: Path, params: dict) -> dict:
    """Offline MLM or a pretrained copy -> ``out`` (safetensors + tokenizer + config.yaml + metrics.json)."""
    from spritegen.io import write_json

    if cfg.pretrained:
        encoder, metrics, source = load_pretrained(cfg), {"pretrained": 1.0}, f"pretrained:{cfg.pretrained}"
    else:
        encoder, metrics = pretrain_mlm(cfg, rt, prompts, val_prompts)
        source = "offline-mlm"
    encoder.model.cpu()
    save_checkpoint(out, {"text": encoder.model}, {"params": params, "run": rt.settings(),
                                                   "text_model": text_config_dict(encoder), "text_source": source})
    save_tokenizer(encoder, out)
    write_json(metrics, out / "metrics.json")
    return metrics


def train_tokenizer(prompts: list[str], vocab_size: int, max_length: int):
    """A lower-casing WordPiece tokenizer fitted to ``prompts``, wrapped as a transformers fast tokenizer.

    The vocabulary is built deterministically (the ``tokenizers`` WordPiece trainer breaks frequency
    ties in hash order, so two runs gave different token ids): special tokens, every character seen
    (alone and as a ``##`` continuation, so any word of those characters still tokenizes), then whole
    words by (-count, word) up to ``vocab_size``."""
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    words = Counter(w for p in prompts for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(p)))
    chars = sorted({c for w in words for c in w})
    vocab = list(SPECIAL_TOKENS) + chars + [f"##{c}" for c in chars]
    seen = set(vocab)
    for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= vocab_size:
            break
        if w not in seen:
            vocab.append(w)
            seen.add(w)
    tok = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=max_length,
    )


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, mask_id: int, vocab_size: int,
                n_special: int, p: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 masking, on the ids' device. Returns (masked input ids, labels: -100 where not predicted)."""
    dev = input_ids.device
    ids = input_ids.clone()
    special = input_ids < n_special  # [PAD] [UNK] [CLS] [SEP] [MASK] have the first ids
    chosen = (torch.rand(ids.shape, generator=generator, device=dev) < p) & ~special & attention_mask.bool()
    # every prompt predicts at least one token (short prompts would often predict none)
    first_real = (~special).float().argmax(1, keepdim=True)  # (B, 1)
    none = ~chosen.any(1, keepdim=True)
    chosen = chosen | (none & (torch.arange(ids.shape[1], device=dev) == first_real) & ~special)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    u = torch.rand(ids.shape, generator=generator, device=dev)
    random_ids = torch.randint(n_special, vocab_size, ids.shape, generator=generator, device=dev)
    ids = torch.where(chosen & (u < 0.8), torch.full_like(ids, mask_id), ids)
    ids = torch.where(chosen & (u >= 0.8) & (u < 0.9), random_ids, ids)
    return ids, labels


def pretrain_mlm(cfg: TextConfig, rt: Runtime, prompts: list[str], val_prompts: list[str]) -> tuple[TextEncoder, dict]:
    """Fit the tokenizer and pretrain the encoder on the prompt corpus. Returns (TextEncoder, metrics)."""
    rt.seed_global("text")  # init and dropout (transformers uses the global RNG)
    tokenizer = train_tokenizer(prompts, cfg.vocab_size, cfg.max_length)
    vocab, mask_id = len(tokenizer), tokenizer.convert_tokens_to_ids("[MASK]")
    mlm = build_bert(cfg, vocab).to(rt.device).train()
    enc = tokenizer(prompts, padding="max_length", truncation=True, max_length=cfg.max_length, return_tensors="pt")
    ids_all, att_all = enc["input_ids"].to(rt.device), enc["attention_mask"].to(rt.device)  # (N, L), kept on the device
    opt = adamw({"text": mlm.parameters()}, lr={"text": cfg.mlm_lr}, clip={"text": cfg.grad_clip}, weight_decay=0.01)
    guard = StepGuard(rt.cfg.max_bad_steps, rt.cfg.explode_factor, rt.device)
    n, B = len(prompts), cfg.mlm_batch_size
    steps_per_epoch = -(-n // B)
    total = max(1, cfg.mlm_epochs * steps_per_epoch)
    log = TrainLog("text mlm", None, total)
    loss_sum, step = torch.zeros((), device=rt.device), 0
    try:
        for epoch in range(cfg.mlm_epochs):
            g = rt.generator("text", epoch)
            perm = torch.randperm(n, generator=g, device=rt.device)
            loss_sum.zero_()
            for b in range(steps_per_epoch):
                idx = perm[b * B : (b + 1) * B]
                ids, labels = mask_tokens(ids_all[idx], att_all[idx], mask_id, vocab, len(SPECIAL_TOKENS), cfg.mlm_mask_prob, g)
                set_lr(opt, "onecycle", step, total, warm_restart=False)
                with rt.autocast():
                    loss = mlm(input_ids=ids, attention_mask=additive_mask(att_all[idx]), labels=labels).loss
                guarded_step(opt, loss.float(), guard)
                loss_sum += loss.detach().float()
                step += 1
                log.advance()
            guard.check()
            log.say(f"text mlm epoch {epoch + 1}/{cfg.mlm_epochs} loss {float(loss_sum) / steps_per_epoch:.3f} eta {log.eta()}")
    finally:
        log.close()
    metrics = {"mlm_train_loss": float(loss_sum) / steps_per_epoch if cfg.mlm_epochs else float("nan")}
    if val_prompts:
        mlm.eval()
        venc = tokenizer(val_prompts, padding="max_length", truncation=True, max_length=cfg.max_length, return_tensors="pt")
        vids, vatt = venc["input_ids"].to(rt.device), venc["attention_mask"].to(rt.device)
        ids, labels = mask_tokens(vids, vatt, mask_id, vocab, len(SPECIAL_TOKENS), cfg.mlm_mask_prob, rt.generator("text", "val"))
        with torch.no_grad():
            out = mlm(input_ids=ids, attention_mask=additive_mask(vatt), labels=labels)
        sel = labels != -100
        metrics["mlm_val_loss"] = float(out.loss)
        metrics["mlm_val_accuracy"] = float((out.logits.argmax(-1)[sel] == labels[sel]).float().mean())
    return TextEncoder(mlm.bert, tokenizer, cfg.max_length), {k: v for k, v in metrics.items() if v == v}
