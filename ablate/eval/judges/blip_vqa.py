"""BLIP VQA judge for DPG-Bench: ``transformers`` ``BlipForQuestionAnswering``.

DPG-Bench's reference judge is mPLUG-large through ModelScope, which does not install
cleanly next to a modern torch; BLIP VQA is the closest model with a ``from_pretrained``
path (hub id or local folder). Numbers made with it are comparable across runs of this
harness, not to published DPG scores: say which judge made them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from ablate.registry import register


@register("judge", "blip-vqa")
class BlipVQAJudge:
    @dataclass
    class Config:
        model: str = "Salesforce/blip-vqa-base"  # hub id or local folder (model + processor)
        processor: str | None = None  # defaults to ``model``
        device: str = "auto"  # auto: cuda when available
        batch_size: int = 32  # (image, question) pairs per forward
        max_answer_tokens: int = 10

    def __init__(self, cfg: Config | None = None):
        from transformers import BlipForQuestionAnswering, BlipProcessor

        self.cfg = cfg = cfg or self.Config()
        if cfg.device == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(cfg.device)
        try:
            self.processor = BlipProcessor.from_pretrained(cfg.processor or cfg.model)
            self.model = BlipForQuestionAnswering.from_pretrained(cfg.model)
        except (OSError, ValueError) as err:  # ValueError: HF's invalid-repo-id error
            raise OSError(f"judge blip-vqa: cannot load {cfg.model!r} ({err}). Without network, "
                          f"set model to a local folder holding the BLIP VQA weights and "
                          f"processor (save_pretrained layout).") from None
        self.model.to(self.device).eval()

    @torch.no_grad()
    def answer(self, images: list[Image.Image], questions: list[list[str]]) -> list[list[str]]:
        """One list of answers per image (lower-case, stripped), aligned with ``questions``."""
        if len(images) != len(questions):
            raise ValueError(f"answer: {len(images)} images but {len(questions)} question lists")
        # Flatten to (image, question) pairs so a batch can mix images.
        pairs = [(i, q) for i, qs in enumerate(questions) for q in qs]
        rgb = [im.convert("RGB") for im in images]
        flat: list[str] = []
        for start in range(0, len(pairs), self.cfg.batch_size):
            chunk = pairs[start:start + self.cfg.batch_size]
            inputs = self.processor(images=[rgb[i] for i, _ in chunk], text=[q for _, q in chunk],
                                    return_tensors="pt", padding=True).to(self.device)
            out = self.model.generate(**inputs, max_new_tokens=self.cfg.max_answer_tokens)
            flat += [a.strip().lower() for a in
                     self.processor.batch_decode(out, skip_special_tokens=True)]
        answers, k = [], 0
        for qs in questions:
            answers.append(flat[k:k + len(qs)])
            k += len(qs)
        return answers
