"""The shared text encoder every family reads: tokenizer + BERT-mini-sized encoder (the model only;
its training, the ``text`` stage, is spritegen/text/train.py).

Two paths, chosen by ``text.pretrained`` (the path taken is written into the stage's config.yaml):

* offline (default): a WordPiece tokenizer trained on the train-split prompts (``tokenizers``) and a
  ``transformers.BertModel`` (4 layers, hidden 256, 4 heads: BERT-mini's shape) pretrained by masked
  language modelling on the same prompts. Pure text: nothing from any image model, so nothing leaks from
  the evaluator that scores the generator.
* ``text.pretrained: <local folder or name>``: ``AutoTokenizer``/``AutoModel.from_pretrained(...,
  local_files_only=True)`` (e.g. prajjwal1/bert-mini in the Hugging Face cache).

Either way the stage writes ``models/text/`` (``model.safetensors`` + ``config.yaml`` + ``tokenizer/``)
and every family loads the encoder from there with :func:`load_text_encoder`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from spritegen.checkpoint import load_config, load_into, load_tensors
from spritegen.config import ConfigError
from spritegen.errors import UserError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass
class TextConfig:
    """params.yaml ``text``: the shared text encoder (stage ``text``) and its fine-tuning settings."""

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
    grad_clip: float = field(default=1.0, metadata={"gt": 0, "doc": "max gradient norm of the text encoder (MLM pretraining and fine-tuning)"})

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
        tok = self.tokenize(prompts, next(self.model.parameters()).device)
        return self.states(tok["input_ids"], tok["attention_mask"]), tok["attention_mask"]

    def states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token states (B, L, D) of already tokenized prompts (training tokenizes its prompts once)."""
        return self.model(input_ids=input_ids, attention_mask=additive_mask(attention_mask)).last_hidden_state

    @staticmethod
    def pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked mean over tokens: (B, L, D), (B, L) -> (B, D)."""
        m = mask.to(hidden.dtype)[..., None]
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


def additive_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) 1 = token, 0 = padding -> (B, 1, 1, L) additive attention bias. transformers uses a 4-D mask as
    given; from a 2-D one it first asks whether any token is padded (``mask.all()``), which makes the host
    wait for the device on every call."""
    return (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min


def build_bert(cfg: TextConfig, vocab_size: int):
    from transformers import BertConfig, BertForMaskedLM

    bert_cfg = BertConfig(
        vocab_size=vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=4 * cfg.hidden_size,
        max_position_embeddings=max(64, cfg.max_length), pad_token_id=0,
    )
    return BertForMaskedLM(bert_cfg)


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


# --- saving and loading (models/text and the family bundles that carry it) --------------------------------


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
        raise UserError(f"{tok_dir} missing: run `spritegen train text` first")
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    mc = dict(text_meta["model_config"])
    model_config = AutoConfig.for_model(mc.pop("model_type"), **mc)
    try:
        model = AutoModel.from_config(model_config, add_pooling_layer=False)
    except TypeError:
        model = AutoModel.from_config(model_config)
    return TextEncoder(model, tokenizer, int(text_meta["max_length"]))


def load_text_encoder(folder: str | Path) -> TextEncoder:
    """Load ``models/text`` (or any stage bundle: they all carry ``text.*`` weights + tokenizer/)."""
    folder = Path(folder)
    meta = load_config(folder)
    if "text_model" not in meta:
        raise UserError(f"{folder}/config.yaml has no text_model section: not a text encoder checkpoint")
    encoder = build_text_encoder(meta["text_model"], folder)
    load_into(encoder.model, load_tensors(folder / "model.safetensors"), "text", folder)
    encoder.eval()
    return encoder
