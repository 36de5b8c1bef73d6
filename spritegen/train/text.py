"""The training prompts as a table on the device: tokenized once, and encoded once while the text
encoder is frozen (every family conditions on the shared text stage, spritegen/text).

    table = PromptTable(encoder, data.prompts, cache=True)     # frozen encoder: states computed now
    states, mask, empty_states, empty_mask = table.lookup(encoder, batch.prompt)
    pooled = pooled_prompts(encoder, data.prompts)             # (P, D): a conditional family's text input

On the GPU the frozen encoder used to run on every step (about a third of a U-Net step there); now a
step gathers rows. The last row is the empty prompt, classifier-free guidance's unconditional input.
"""

from __future__ import annotations

import torch

from spritegen.text.encoder import TextEncoder


class PromptTable:
    def __init__(self, encoder: TextEncoder, prompts: list[str], cache: bool, batch_size: int = 256):
        device = next(encoder.parameters()).device
        tok = encoder.tokenize(list(prompts) + [""], device)
        self.ids, self.mask = tok["input_ids"], tok["attention_mask"]  # (P + 1, L)
        self.empty = len(prompts)
        self.states = None  # (P + 1, L, D) when cached
        if cache:
            was_training = encoder.training
            encoder.eval()
            with torch.no_grad():
                self.states = torch.cat([encoder.states(self.ids[i : i + batch_size], self.mask[i : i + batch_size])
                                         for i in range(0, len(self.ids), batch_size)])
            encoder.train(was_training)

    def lookup(self, encoder: TextEncoder, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """States (B, L, D) and mask (B, L) of prompts ``prompt`` (B,) ids, and the empty prompt's (1, L, D),
        (1, L). Cached: gathered. Otherwise the encoder runs (with gradient if it trains)."""
        empty = slice(self.empty, self.empty + 1)
        if self.states is not None:
            return self.states[prompt], self.mask[prompt], self.states[empty], self.mask[empty]
        rows = torch.cat([prompt, prompt.new_full((1,), self.empty)])
        states = encoder.states(self.ids[rows], self.mask[rows])
        return states[:-1], self.mask[prompt], states[-1:], self.mask[empty]


@torch.no_grad()
def pooled_prompts(text: TextEncoder, prompts: list[str], batch_size: int = 256) -> torch.Tensor:
    """(P, D) masked-mean token states of every prompt, computed once (the text encoder is frozen): the
    cvae's and the gan's text input."""
    device = next(text.parameters()).device
    out = []
    for i in range(0, len(prompts), batch_size):
        tok = text.tokenize(prompts[i : i + batch_size], device)
        out.append(TextEncoder.pool(text.states(tok["input_ids"], tok["attention_mask"]), tok["attention_mask"]))
    return torch.cat(out)
