"""The text side of the latent diffusion family: tokenizer + BERT-mini-sized encoder.

Two paths, chosen by ``text.pretrained`` (the path taken is written into the stage's config.yaml):

* offline (default): a WordPiece tokenizer trained on the train-split prompts (``tokenizers``) and a
  ``transformers.BertModel`` (4 layers, hidden 256, 4 heads: BERT-mini's shape) pretrained by masked
  language modelling on the same prompts. Pure text: nothing from any image model, so nothing leaks from
  the evaluator that scores the generator.
* ``text.pretrained: <local folder or name>``: ``AutoTokenizer``/``AutoModel.from_pretrained(...,
  local_files_only=True)`` (e.g. prajjwal1/bert-mini in the Hugging Face cache).

Either way the stage writes ``models/ldm/text/`` (``model.safetensors`` + ``config.yaml`` + ``tokenizer/``)
and every later stage loads the encoder from there with :func:`load_text_encoder`.

    spritegen train ldm --stage text [--preset tiny]
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from spritegen.checkpoint import load_config, load_into, load_tensors, save_checkpoint
from spritegen.config import ConfigError, to_dict
from spritegen.errors import UserError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass
class TextConfig:
    """params.yaml ``text``: the text encoder (stage ``text``) and its fine-tuning learning rate."""

    pretrained: str | None = field(default=None, metadata={"doc": "local path or cached hub name of a pretrained encoder; null = train offline"})
    vocab_size: int = field(default=2000, metadata={"ge": 32, "doc": "offline tokenizer: WordPiece vocabulary size (upper bound)"})
    hidden_size: int = field(default=256, metadata={"ge": 8, "doc": "offline encoder width (BERT-mini: 256)"})
    num_layers: int = field(default=4, metadata={"ge": 1, "doc": "offline encoder depth (BERT-mini: 4)"})
    num_heads: int = field(default=4, metadata={"ge": 1, "doc": "attention heads (BERT-mini: 4)"})
    max_length: int = field(default=32, metadata={"ge": 4, "doc": "tokens per prompt (padded/truncated)"})
    mlm_epochs: int = field(default=2, metadata={"ge": 0, "doc": "offline: masked-language-modelling epochs over the train prompts"})
    mlm_batch_size: int = field(default=64, metadata={"ge": 1, "doc": "offline: MLM batch size"})
    mlm_lr: float = field(default=5e-4, metadata={"gt": 0, "doc": "offline: MLM learning rate"})
    mlm_mask_prob: float = field(default=0.15, metadata={"gt": 0, "lt": 1, "doc": "offline: fraction of tokens masked"})
    lr: float = field(default=5e-5, metadata={"gt": 0, "doc": "learning rate when a schedule phase trains the text encoder"})
    grad_clip: float = field(default=1.0, metadata={"gt": 0, "doc": "max gradient norm of the text encoder"})
    seed: int = field(default=0, metadata={"ge": 0})

    def validate(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size: {self.hidden_size} is not divisible by num_heads {self.num_heads}")


# --- the module the rest of the family uses ---------------------------------------------------------


class TextEncoder(nn.Module):
    """prompts -> token states (B, L, D) + mask (B, L), and a pooled vector (B, D).

    The tokenizer pads every prompt to ``max_length`` so an image's conditioning never depends on the
    other prompts of its batch."""

    def __init__(self, model: nn.Module, tokenizer, max_length: int):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, prompts: list[str], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}

    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.model.parameters()).device
        tok = self.tokenize(prompts, device)
        hidden = self.model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).last_hidden_state  # (B, L, D)
        return hidden, tok["attention_mask"]

    @staticmethod
    def pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked mean over tokens: (B, L, D), (B, L) -> (B, D)."""
        m = mask.to(hidden.dtype)[..., None]
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


# --- offline path: tokenizer + MLM pretraining ------------------------------------------------------


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


def build_bert(cfg: TextConfig, vocab_size: int):
    from transformers import BertConfig, BertForMaskedLM

    bert_cfg = BertConfig(
        vocab_size=vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=4 * cfg.hidden_size,
        max_position_embeddings=max(64, cfg.max_length), pad_token_id=0,
    )
    return BertForMaskedLM(bert_cfg)


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, mask_id: int, vocab_size: int,
                n_special: int, p: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 masking. Returns (masked input ids, labels with -100 where not predicted)."""
    ids = input_ids.clone()
    special = input_ids < n_special  # [PAD] [UNK] [CLS] [SEP] [MASK] have the first ids
    chosen = (torch.rand(ids.shape, generator=generator) < p) & ~special & attention_mask.bool()
    # make sure every prompt predicts at least one token (short prompts would often predict none)
    first_real = (~special).float().argmax(1)
    none = ~chosen.any(1)
    chosen[none, first_real[none]] = ~special[none, first_real[none]]
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    u = torch.rand(ids.shape, generator=generator)
    ids[chosen & (u < 0.8)] = mask_id
    rand_pos = chosen & (u >= 0.8) & (u < 0.9)
    ids[rand_pos] = torch.randint(n_special, vocab_size, (int(rand_pos.sum()),), generator=generator)
    return ids, labels


def pretrain_mlm(cfg: TextConfig, prompts: list[str], val_prompts: list[str], log=print):
    """Train tokenizer + encoder on the prompt corpus. Returns (TextEncoder, metrics)."""
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # dropout inside transformers uses the global RNG
    tokenizer = train_tokenizer(prompts, cfg.vocab_size, cfg.max_length)
    vocab = len(tokenizer)
    mlm = build_bert(cfg, vocab)
    mask_id = tokenizer.convert_tokens_to_ids("[MASK]")
    enc = tokenizer(prompts, padding="max_length", truncation=True, max_length=cfg.max_length, return_tensors="pt")
    ids_all, att_all = enc["input_ids"], enc["attention_mask"]  # (N, L)
    opt = torch.optim.AdamW(mlm.parameters(), lr=cfg.mlm_lr, weight_decay=0.01)
    n = len(prompts)
    steps_per_epoch = math.ceil(n / cfg.mlm_batch_size)
    total = max(1, cfg.mlm_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.mlm_lr, total_steps=total, pct_start=0.1)
    t0, step, loss_ema = time.time(), 0, None
    mlm.train()
    for epoch in range(cfg.mlm_epochs):
        perm = torch.randperm(n, generator=g)
        for b in range(steps_per_epoch):
            idx = perm[b * cfg.mlm_batch_size : (b + 1) * cfg.mlm_batch_size]
            ids, labels = mask_tokens(ids_all[idx], att_all[idx], mask_id, vocab, len(SPECIAL_TOKENS), cfg.mlm_mask_prob, g)
            loss = mlm(input_ids=ids, attention_mask=att_all[idx], labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(mlm.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            step += 1
            loss_ema = loss.item() if loss_ema is None else 0.9 * loss_ema + 0.1 * loss.item()
        log(f"text mlm epoch {epoch + 1}/{cfg.mlm_epochs}  loss {loss_ema:.3f}  {step / (time.time() - t0):.1f} steps/s")
    metrics = {"mlm_train_loss": float(loss_ema or float("nan"))}
    if val_prompts:
        mlm.eval()
        gv = torch.Generator().manual_seed(cfg.seed + 1)
        venc = tokenizer(val_prompts, padding="max_length", truncation=True, max_length=cfg.max_length, return_tensors="pt")
        ids, labels = mask_tokens(venc["input_ids"], venc["attention_mask"], mask_id, vocab, len(SPECIAL_TOKENS), cfg.mlm_mask_prob, gv)
        with torch.no_grad():
            out = mlm(input_ids=ids, attention_mask=venc["attention_mask"], labels=labels)
        pred = out.logits.argmax(-1)
        sel = labels != -100
        metrics["mlm_val_loss"] = float(out.loss)
        metrics["mlm_val_accuracy"] = float((pred[sel] == labels[sel]).float().mean())
    encoder = TextEncoder(mlm.bert, tokenizer, cfg.max_length)
    return encoder, metrics


def load_pretrained(cfg: TextConfig) -> TextEncoder:
    """``text.pretrained`` from a local folder or the local Hugging Face cache only (never the network)."""
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.pretrained, local_files_only=True)
        model = AutoModel.from_pretrained(cfg.pretrained, local_files_only=True, add_pooling_layer=False)
    except TypeError:
        model = AutoModel.from_pretrained(cfg.pretrained, local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"text.pretrained={cfg.pretrained!r}: not a local folder or cached model ({e}); "
                        "set text.pretrained: null to train the encoder offline") from None
    return TextEncoder(model, tokenizer, cfg.max_length)


# --- saving and loading (models/ldm/text and the later stage bundles) --------------------------------


def text_config_dict(encoder: TextEncoder) -> dict:
    return {"model_config": encoder.model.config.to_dict(), "max_length": encoder.max_length}


def save_tokenizer(encoder: TextEncoder, folder: Path) -> None:
    encoder.tokenizer.save_pretrained(str(Path(folder) / "tokenizer"))


def build_text_encoder(text_meta: dict, folder: Path) -> TextEncoder:
    """An encoder with the architecture in ``text_meta`` and the tokenizer in ``folder/tokenizer``
    (weights are loaded by the caller from the bundle's safetensors)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    tok_dir = Path(folder) / "tokenizer"
    if not tok_dir.exists():
        raise UserError(f"{tok_dir} missing: run `spritegen train ldm --stage text` first")
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    mc = dict(text_meta["model_config"])
    model_config = AutoConfig.for_model(mc.pop("model_type"), **mc)
    try:
        model = AutoModel.from_config(model_config, add_pooling_layer=False)
    except TypeError:
        model = AutoModel.from_config(model_config)
    return TextEncoder(model, tokenizer, int(text_meta["max_length"]))


def load_text_encoder(folder: str | Path) -> TextEncoder:
    """Load ``models/ldm/text`` (or any stage bundle: they all carry ``text.*`` weights + tokenizer/)."""
    folder = Path(folder)
    meta = load_config(folder)
    if "text_model" not in meta:
        raise UserError(f"{folder}/config.yaml has no text_model section: not a text encoder checkpoint")
    encoder = build_text_encoder(meta["text_model"], folder)
    load_into(encoder.model, load_tensors(folder / "model.safetensors"), "text", folder)
    encoder.eval()
    return encoder


def train_text_stage(cfg: TextConfig, prompts: list[str], val_prompts: list[str], out: Path, log=print) -> dict:
    """The ``text`` DVC stage body: offline MLM or pretrained copy -> ``out`` (safetensors + tokenizer)."""
    if cfg.pretrained:
        encoder = load_pretrained(cfg)
        metrics = {"pretrained": 1.0}
        source = f"pretrained:{cfg.pretrained}"
    else:
        encoder, metrics = pretrain_mlm(cfg, prompts, val_prompts, log)
        source = "offline-mlm"
    save_checkpoint(out, {"text": encoder.model}, {"text": to_dict(cfg), "text_model": text_config_dict(encoder), "text_source": source})
    save_tokenizer(encoder, out)
    return metrics
