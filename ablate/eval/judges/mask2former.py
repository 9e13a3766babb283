"""GenEval detector judge: Mask2Former instance segmentation + CLIP zero-shot colours.

GenEval's reference detector is mmdet 2.x Mask2Former Swin-S (COCO instance); here it is
the same architecture through ``transformers`` (``Mask2FormerForUniversalSegmentation``,
hub id or local folder), so no mmcv build is needed. Post-processing follows mmdet's
``MaskFormerFusionHead.instance_postprocess`` rather than ``transformers``' helper, because
the latter resizes masks through a fixed 384x384 square (misplacing them for padded,
non-square inputs) and rounds scores:

- class probabilities = softmax without the "no object" column; top ``max_instances``
  (query, class) pairs over all queries x classes;
- mask logits upsampled to the padded input, cropped to the image, resized to the original
  size; binary mask = sigmoid > 0.5; score = class probability x mean mask probability
  inside the mask; box = the mask's bounding box (exclusive right / bottom edge).

Colour (only for classes the prompt asks a colour of): each instance mask is pasted on a
``#999999`` background, cropped to its box and classified by CLIP among GenEval's ten
colours, each colour's text embedding the normalised mean of three templates (as
``clip_benchmark``'s zero-shot classifier that the official evaluator uses).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ablate.eval.scorers.geneval import COCO_CLASSES, COLORS, DEFAULT_RULES, Rules, filter_detections
from ablate.registry import register

COLOR_TEMPLATES = ("a photo of a {color} {cls}", "a photo of a {color}-colored {cls}",
                   "a photo of a {color} object")

# COCO label spellings used by detectron2 / mmdet / older VOC-style checkpoints -> GenEval.
LABEL_ALIASES = {
    "mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard",
    "tvmonitor": "tv", "tv monitor": "tv", "sofa": "couch", "pottedplant": "potted plant",
    "diningtable": "dining table", "motorbike": "motorcycle", "aeroplane": "airplane",
    "hair dryer": "hair drier", "cellphone": "cell phone", "doughnut": "donut",
    "ball": "sports ball", "hotdog": "hot dog", "wineglass": "wine glass",
}


def _normalise(label: str) -> str:
    return re.sub(r"[\s_\-]+", " ", str(label).lower()).strip()


def geneval_label_names(id2label: dict, label_map: dict | None = None) -> dict[int, str]:
    """Model label id -> GenEval class name: the user's ``label_map`` first, then the exact
    GenEval name, then a known alias, else the label itself (lower-cased; classes GenEval
    never asks for are harmless)."""
    user = {_normalise(k): v for k, v in (label_map or {}).items()}
    coco = set(COCO_CLASSES)
    names = {}
    for idx, label in id2label.items():
        key = _normalise(label)
        names[int(idx)] = user.get(key) or (key if key in coco else LABEL_ALIASES.get(key, key))
    return names


def resolve_device(name: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def _features(output) -> torch.Tensor:
    """``get_*_features`` return a tensor (transformers 4) or an output whose
    ``pooler_output`` is the projected embedding (transformers 5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ColorClassifier:
    """CLIP zero-shot colour of object crops: ``classify(crops, classname) -> [colour]``."""

    def __init__(self, model, processor, device="cpu", colors=COLORS, templates=COLOR_TEMPLATES,
                 batch_size: int = 32):
        self.model, self.processor = model.to(device).eval(), processor
        self.device, self.colors, self.templates = torch.device(device), tuple(colors), templates
        self.batch_size = batch_size
        self._weights: dict[str, torch.Tensor] = {}  # per class name: [n_colours, dim]

    @classmethod
    def from_pretrained(cls, model: str, processor: str | None = None, device="cpu", **kwargs):
        from transformers import CLIPModel, CLIPProcessor

        return cls(CLIPModel.from_pretrained(model), CLIPProcessor.from_pretrained(processor or model),
                   device=device, **kwargs)

    @torch.no_grad()
    def text_weights(self, classname: str) -> torch.Tensor:
        if classname not in self._weights:
            rows = []
            for color in self.colors:
                texts = [t.format(color=color, cls=classname) for t in self.templates]
                inputs = self.processor(text=texts, return_tensors="pt", padding=True).to(self.device)
                emb = _features(self.model.get_text_features(**inputs)).float()
                emb = torch.nn.functional.normalize(emb, dim=-1).mean(0)
                rows.append(torch.nn.functional.normalize(emb, dim=-1))
            self._weights[classname] = torch.stack(rows)
        return self._weights[classname]

    @torch.no_grad()
    def classify(self, crops: list[Image.Image], classname: str) -> list[str]:
        weights, out = self.text_weights(classname), []
        for start in range(0, len(crops), self.batch_size):
            chunk = [c.convert("RGB") for c in crops[start:start + self.batch_size]]
            inputs = self.processor(images=chunk, return_tensors="pt").to(self.device)
            emb = _features(self.model.get_image_features(**inputs)).float()
            logits = torch.nn.functional.normalize(emb, dim=-1) @ weights.T
            out += [self.colors[i] for i in logits.argmax(-1).tolist()]
        return out


def masked_crop(image: Image.Image, mask: np.ndarray, box, background="#999999") -> Image.Image:
    """The object alone on a flat background, cropped to its box (the official crop)."""
    image = image.convert("RGB")
    blank = Image.new("RGB", image.size, background)
    pasted = Image.composite(image, blank, Image.fromarray(mask.astype(np.uint8) * 255, "L"))
    return pasted.crop(tuple(int(round(v)) for v in box))


@register("judge", "mask2former")
class Mask2FormerJudge:
    @dataclass
    class Config:
        model: str = "facebook/mask2former-swin-small-coco-instance"  # hub id or local folder
        processor: str | None = None  # image processor; defaults to ``model``
        # Resize for the detector. mmdet's GenEval config tests at shorter edge 800 / longer
        # edge <= 1333; None keeps the processor's saved size (384 in the hub checkpoints).
        size: dict[str, int] | None = field(
            default_factory=lambda: {"shortest_edge": 800, "longest_edge": 1333})
        clip_model: str = "openai/clip-vit-large-patch14"  # the colour classifier (+ processor)
        clip_processor: str | None = None
        device: str = "auto"  # auto: cuda when available
        batch_size: int = 4  # images per detector forward
        max_instances: int = 100  # top (query, class) pairs per image, as mmdet's max_per_image
        # None: the GenEval threshold of each prompt's tag (0.3 / 0.9), so only detections
        # the rules can keep are returned; lower it to inspect raw detections.
        score_threshold: float | None = None
        label_map: dict[str, str] = field(default_factory=dict)  # model label -> GenEval name
        background: str = "#999999"  # behind the masked object in colour crops

        def __post_init__(self):
            if self.batch_size < 1 or self.max_instances < 1:
                raise ValueError("batch_size and max_instances must be >= 1")

    def __init__(self, cfg: Config | None = None, rules: Rules = DEFAULT_RULES):
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        self.cfg = cfg = cfg or self.Config()
        self.rules = rules
        self.device = resolve_device(cfg.device)
        try:
            self.processor = AutoImageProcessor.from_pretrained(cfg.processor or cfg.model)
            self.model = Mask2FormerForUniversalSegmentation.from_pretrained(cfg.model)
        except OSError as err:
            raise OSError(f"judge mask2former: cannot load {cfg.model!r} ({err}). Without network, "
                          f"set model to a local folder with the weights and image processor "
                          f"(save_pretrained layout).") from None
        self.model.to(self.device).eval()
        self.names = geneval_label_names(self.model.config.id2label, cfg.label_map)
        self._colors: ColorClassifier | None = None  # loaded on the first colour prompt

    @property
    def colors(self) -> ColorClassifier:
        if self._colors is None:
            try:
                self._colors = ColorClassifier.from_pretrained(
                    self.cfg.clip_model, self.cfg.clip_processor, device=self.device)
            except OSError as err:
                raise OSError(f"judge mask2former: cannot load the CLIP colour classifier "
                              f"{self.cfg.clip_model!r} ({err}); set clip_model to a local "
                              f"folder (CLIPModel + CLIPProcessor).") from None
        return self._colors

    def detect(self, images: list[Image.Image], metadata: list[dict]) -> list[dict[str, list[dict]]]:
        """Per image: ``{class: [{"box", "score", "color"?}]}``, highest score first."""
        if len(images) != len(metadata):
            raise ValueError(f"detect: {len(images)} images but {len(metadata)} metadata entries")
        out = []
        for start in range(0, len(images), self.cfg.batch_size):
            batch = [im.convert("RGB") for im in images[start:start + self.cfg.batch_size]]
            metas = metadata[start:start + self.cfg.batch_size]
            for image, meta, dets in zip(batch, metas, self._segment(batch, metas)):
                out.append(self._add_colors(image, meta or {}, dets))
        return out

    def _threshold(self, meta: dict | None) -> float:
        if self.cfg.score_threshold is not None:
            return self.cfg.score_threshold
        return self.rules.threshold_for((meta or {}).get("tag"))

    @torch.no_grad()
    def _segment(self, images: list[Image.Image], metas: list[dict]) -> list[dict]:
        kwargs = {"size": dict(self.cfg.size)} if self.cfg.size else {}
        inputs = self.processor(images=images, return_tensors="pt", **kwargs)
        pixel_values = inputs["pixel_values"].to(self.device)
        pixel_mask = inputs.get("pixel_mask")
        outputs = self.model(pixel_values=pixel_values,
                             pixel_mask=None if pixel_mask is None else pixel_mask.to(self.device))
        padded = pixel_values.shape[-2:]
        results = []
        for i, (image, meta) in enumerate(zip(images, metas)):
            # The valid (unpadded) part of the network input, from the processor's pixel mask.
            if pixel_mask is None:
                valid_h, valid_w = padded
            else:
                valid_h = int(pixel_mask[i].any(1).sum())
                valid_w = int(pixel_mask[i].any(0).sum())
            results.append(self._instances(outputs.class_queries_logits[i].float(),
                                           outputs.masks_queries_logits[i].float(),
                                           padded, (valid_h, valid_w), image.size[::-1],
                                           self._threshold(meta)))
        return results

    def _instances(self, class_logits, mask_logits, padded, valid, original, threshold) -> dict:
        probs = class_logits.softmax(-1)[:, :-1]  # drop the "no object" column
        num_classes = probs.shape[1]
        k = min(self.cfg.max_instances, probs.numel())
        top_scores, flat = probs.flatten().topk(k)
        # score = class prob x mask score <= class prob: pairs at or under the threshold can
        # never be kept, so skip their (costly) full-size masks. Same output as mmdet + rules.
        keep = top_scores > threshold
        top_scores, flat = top_scores[keep], flat[keep]
        detections: dict[str, list[dict]] = {}
        if not len(flat):
            return detections
        queries, labels = flat // num_classes, flat % num_classes
        masks = torch.nn.functional.interpolate(mask_logits[queries][None], size=padded,
                                                mode="bilinear", align_corners=False)
        masks = masks[..., :valid[0], :valid[1]]
        masks = torch.nn.functional.interpolate(masks, size=original, mode="bilinear",
                                                align_corners=False)[0]
        binary = masks > 0  # sigmoid > 0.5
        area = binary.flatten(1).sum(1)
        mask_scores = (masks.sigmoid() * binary).flatten(1).sum(1) / (area + 1e-6)
        scores = top_scores * mask_scores
        for j in range(len(flat)):
            if area[j] == 0:  # empty mask: score 0, no box (mmdet would give [0,0,0,0])
                continue
            ys = torch.nonzero(binary[j].any(1)).flatten()
            xs = torch.nonzero(binary[j].any(0)).flatten()
            box = [float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1)]
            name = self.names.get(int(labels[j]), str(int(labels[j])))
            detections.setdefault(name, []).append(
                {"box": box, "score": float(scores[j]), "_mask": binary[j].cpu().numpy()})
        rules = Rules(threshold, threshold, self.rules.max_objects, self.rules.position_margin)
        return filter_detections(detections, None, rules)

    def _add_colors(self, image: Image.Image, meta: dict, detections: dict) -> dict:
        wanted = {c["class"] for c in meta.get("include", []) if "color" in c}
        for cls in wanted & set(detections):
            dets = detections[cls]
            crops = [masked_crop(image, d["_mask"], d["box"], self.cfg.background) for d in dets]
            for d, color in zip(dets, self.colors.classify(crops, cls)):
                d["color"] = color
        for dets in detections.values():
            for d in dets:
                d.pop("_mask", None)
        return detections
