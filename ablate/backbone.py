"""The frozen causal LM with learnable query tokens.

A caption is wrapped in the prompt template (and the LM's chat template when it has one),
its token embeddings ``C`` are followed by ``num_queries`` learnable vectors ``Q``, and the
LM's last hidden states at the query positions are the conditioning ``[B, N, hidden]``.

Because the LM is causal and frozen, the prompt's hidden states and key/value cache do not
depend on ``Q``: with ``reuse_prompt_cache`` the prompt runs once without a graph and only
the query positions are differentiated (the gradient still reaches ``Q`` through every
layer). Both paths give the same output; a test holds them to it.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from ablate.config import BackboneConfig


def resolve_dtype(name: str, device: torch.device | str | None = None) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, name)


class Backbone(nn.Module):
    def __init__(self, cfg: BackboneConfig, num_queries: int):
        super().__init__()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.model)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # Left padding puts every row's queries right after its own prompt.
        self.tokenizer.padding_side = "left"
        self.lm = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=resolve_dtype(cfg.dtype))
        self.lm.requires_grad_(False)
        self.lm.eval()
        self.hidden_size = self.lm.config.hidden_size
        std = getattr(self.lm.config, "initializer_range", 0.02)
        self.queries = nn.Parameter(torch.randn(num_queries, self.hidden_size) * std)

    @property
    def num_queries(self) -> int:
        return self.queries.shape[0]

    def train(self, mode: bool = True):
        super().train(mode)
        self.lm.eval()  # frozen: no dropout, whatever the parent's mode
        return self

    # ---- prompts ---------------------------------------------------------------------

    def format_prompt(self, caption: str) -> str:
        text = self.cfg.prompt_template.format(caption=caption)
        if self.cfg.use_chat_template and getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        return text

    def tokenize(self, captions: list[str]) -> dict[str, torch.Tensor]:
        texts = [self.format_prompt(c) for c in captions]
        # The chat template already holds the BOS token; plain text gets the tokenizer's.
        add_special = not (self.cfg.use_chat_template and getattr(self.tokenizer, "chat_template", None))
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                             max_length=self.cfg.max_prompt_tokens, add_special_tokens=add_special)
        device = self.queries.device
        return {"input_ids": enc["input_ids"].to(device),
                "attention_mask": enc["attention_mask"].to(device)}

    # ---- forward ---------------------------------------------------------------------

    def forward(self, captions: list[str]) -> torch.Tensor:
        """Query hidden states ``[B, num_queries, hidden]`` for a batch of captions."""
        enc = self.tokenize(captions)
        if not self.queries.requires_grad:  # frozen queries: nothing upstream of the head trains
            with torch.no_grad():
                return self._forward_full(enc["input_ids"], enc["attention_mask"])
        if self.cfg.reuse_prompt_cache:
            return self._forward_cached(enc["input_ids"], enc["attention_mask"])
        return self._forward_full(enc["input_ids"], enc["attention_mask"])

    def _query_inputs(self, attention_mask: torch.Tensor):
        batch, n = attention_mask.shape[0], self.num_queries
        lengths = attention_mask.sum(-1, keepdim=True)  # real prompt tokens per row
        query_positions = lengths + torch.arange(n, device=attention_mask.device)
        queries = self.queries.to(self.lm.dtype).unsqueeze(0).expand(batch, -1, -1)
        return queries, query_positions

    @staticmethod
    def _prompt_positions(attention_mask: torch.Tensor) -> torch.Tensor:
        return (attention_mask.cumsum(-1) - 1).clamp(min=0)

    @torch.no_grad()
    def _prompt_pass(self, input_ids, attention_mask, use_cache: bool = False):
        """The frozen LM over the prompt alone, without a graph (its output: hidden states and,
        with ``use_cache``, the KV cache)."""
        return self.lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                     position_ids=self._prompt_positions(attention_mask), use_cache=use_cache)

    def prompt_states(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The LM's last hidden states at the prompt's own tokens ``[B, L, hidden]`` (left-padded:
        every prompt ends at the last position) and their attention mask ``[B, L]``."""
        enc = self.tokenize(captions)
        return self._prompt_pass(enc["input_ids"], enc["attention_mask"]).last_hidden_state, enc["attention_mask"]

    def _forward_full(self, input_ids, attention_mask) -> torch.Tensor:
        """Prompt and queries in one pass (the reference path)."""
        base = self.lm.get_decoder()
        prompt_embeds = self.lm.get_input_embeddings()(input_ids)
        queries, query_positions = self._query_inputs(attention_mask)
        embeds = torch.cat([prompt_embeds, queries], dim=1)
        mask = torch.cat([attention_mask, torch.ones_like(query_positions)], dim=1)
        positions = torch.cat([self._prompt_positions(attention_mask), query_positions], dim=1)
        out = base(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False)
        return out.last_hidden_state[:, -self.num_queries:]

    def _forward_cached(self, input_ids, attention_mask) -> torch.Tensor:
        """Prompt once without a graph, then only the query positions with its KV cache."""
        base = self.lm.get_decoder()
        prompt = self._prompt_pass(input_ids, attention_mask, use_cache=True)
        queries, query_positions = self._query_inputs(attention_mask)
        mask = torch.cat([attention_mask, torch.ones_like(query_positions)], dim=1)
        # transformers >= 5.2 names the KV cache ``cache``; older LMs ``past_key_values``.
        cache = getattr(prompt, "cache", None) or prompt.past_key_values
        name = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        out = base(inputs_embeds=queries, attention_mask=mask, position_ids=query_positions,
                   use_cache=True, **{name: cache})
        return out.last_hidden_state
