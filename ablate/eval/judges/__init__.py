"""Judges: the models that look at generated images for a benchmark (one plugin per file).

Two roles, each a small protocol:

- GenEval detector: ``detect(images: list[PIL.Image], metadata: list[dict])`` -> one dict
  per image mapping a class name to detections ``{"box": [x0, y0, x1, y1] (pixels),
  "score": float, "color": str (when the colour step ran)}``. ``metadata`` is the GenEval
  line of the prompt each image was made for (so a judge can restrict classes / colours).
- DPG VQA: ``answer(images: list[PIL.Image], questions: list[list[str]])`` -> answers, a
  list of strings per image (lower-case; only ``"yes"`` counts).
"""
