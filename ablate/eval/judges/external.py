"""External judge: run a user's command (another environment, the official scripts) and read
what it writes. One judge, three modes, picked by ``mode``:

- ``geneval``: the command scores a whole GenEval layout folder and writes a results jsonl,
  e.g. the official evaluator (in its own mmdet environment)::

      judge: {name: external, mode: geneval,
              command: "conda run -n geneval python evaluation/evaluate_images.py
                        {image_dir} --outfile {out} --model-path /ckpt"}

  Each output line needs ``tag`` and ``correct`` (the official file also has filename,
  prompt, reason, metadata). The judge sets ``scores_folders = True`` so
  ``ablate.eval.scorers.geneval.judge_layout`` hands it the folder instead of calling ``detect``.
- ``detect``: a GenEval detector. Input ``{input}`` is a jsonl of ``{"id", "image",
  "metadata"}``; the command writes ``{out}``, a jsonl of ``{"id", "detections": {class:
  [{"box": [x0, y0, x1, y1], "score", "color"?}]}}``; this harness applies the rules.
- ``vqa``: a DPG-Bench question answerer. Input lines ``{"id", "image", "questions": [...]}``;
  output lines ``{"id", "answers": [...]}`` (one answer per question, compared lower-cased).

Placeholders in ``command``: ``{image_dir}`` (the layout folder, or the folder of the
written images), ``{input}``, ``{out}``, ``{python}`` (this interpreter); literal braces are
doubled (``{{`` ``}}``), as in ``str.format``. The command is
split like a shell would (``shlex``) and run without a shell unless ``shell: true`` (then the
substituted paths are quoted). A failing command raises with the tail of its stderr.
"""

from __future__ import annotations

import json
import os
import shlex
import string
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image

from ablate.registry import register

PLACEHOLDERS = {"image_dir", "input", "out", "python"}
ALLOWED = {"geneval": {"image_dir", "out", "python"}, "detect": PLACEHOLDERS, "vqa": PLACEHOLDERS}
REQUIRED = {"geneval": {"image_dir", "out"}, "detect": {"out"}, "vqa": {"out"}}


class ExternalJudgeError(RuntimeError):
    """The external command failed or wrote something unreadable."""


def _placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


@register("judge", "external")
class ExternalJudge:
    @dataclass
    class Config:
        command: str  # template, e.g. "{python} my_judge.py {input} {out}"
        mode: Literal["geneval", "detect", "vqa"] = "geneval"
        cwd: str | None = None  # working directory of the command
        env: dict[str, str] = field(default_factory=dict)  # added to the environment
        shell: bool = False  # run through /bin/sh (pipes, &&, conda activate ...)
        timeout_s: float | None = None
        work_dir: str | None = None  # where detect/vqa inputs go; None: a temp dir, removed
        # (with several ranks, each uses its own rank<N>/ under work_dir)
        stderr_tail: int = 3000  # characters of stderr quoted in errors

        def __post_init__(self):
            names = _placeholders(self.command)
            unknown = sorted(names - ALLOWED[self.mode])
            if unknown:
                raise ValueError(f"command: placeholder {{{unknown[0]}}} is not available in mode "
                                 f"{self.mode!r}; use {sorted(ALLOWED[self.mode])}")
            missing = sorted(REQUIRED[self.mode] - names)
            if missing:
                why = {"out": "where the command writes its results",
                       "image_dir": "the GenEval layout folder to evaluate"}[missing[0]]
                raise ValueError(f"command: mode {self.mode!r} needs {{{missing[0]}}}: {why}")
            if self.mode != "geneval" and not names & {"input", "image_dir"}:
                raise ValueError(f"command: mode {self.mode!r} needs {{input}} (or {{image_dir}})")

    def __init__(self, cfg: Config):
        self.cfg = cfg
        # judge_layout gives whole folders to judges that score them themselves.
        self.scores_folders = cfg.mode == "geneval"

    # ----------------------------------------------------------------------------------
    def run(self, **paths) -> subprocess.CompletedProcess:
        """Run the command with the placeholders filled; raise ExternalJudgeError on failure."""
        values = {"python": sys.executable, **{k: str(v) for k, v in paths.items()}}
        values = {k: values.get(k, "") for k in PLACEHOLDERS}
        if self.cfg.shell:
            cmd = self.cfg.command.format(**{k: shlex.quote(v) for k, v in values.items()})
        else:
            cmd = [part.format(**values) for part in shlex.split(self.cfg.command)]
        env = {**os.environ, **self.cfg.env}
        shown = cmd if isinstance(cmd, str) else shlex.join(cmd)
        try:
            proc = subprocess.run(cmd, shell=self.cfg.shell, cwd=self.cfg.cwd, env=env,
                                  capture_output=True, text=True, timeout=self.cfg.timeout_s)
        except FileNotFoundError as err:
            raise ExternalJudgeError(f"external judge: cannot start {shown!r}: {err}") from None
        except subprocess.TimeoutExpired as err:
            raise ExternalJudgeError(f"external judge: {shown!r} ran past {self.cfg.timeout_s} s"
                                     f"{self._tail(err.stderr)}") from None
        if proc.returncode != 0:
            raise ExternalJudgeError(f"external judge: {shown!r} failed with exit code "
                                     f"{proc.returncode}{self._tail(proc.stderr)}")
        out = paths.get("out")
        if out is not None and not Path(out).is_file():
            raise ExternalJudgeError(f"external judge: {shown!r} exited 0 but wrote no {out}"
                                     f"{self._tail(proc.stderr)}")
        return proc

    def _tail(self, stderr) -> str:
        if isinstance(stderr, bytes):
            stderr = stderr.decode(errors="replace")
        stderr = (stderr or "").strip()
        if not stderr:
            return " (no stderr)"
        return f"\n--- stderr (last {self.cfg.stderr_tail} characters) ---\n{stderr[-self.cfg.stderr_tail:]}"

    def _records(self, path: Path, required: tuple[str, ...]) -> list[dict]:
        records = []
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ExternalJudgeError(f"{path}:{lineno}: not valid JSON: {err}") from None
            missing = [k for k in required if not isinstance(record, dict) or k not in record]
            if missing:
                raise ExternalJudgeError(f"{path}:{lineno}: missing {missing[0]!r} "
                                         f"(mode {self.cfg.mode!r} needs {list(required)})")
            records.append(record)
        return records

    def _require(self, mode: str) -> None:
        if self.cfg.mode != mode:
            raise ExternalJudgeError(f"external judge is configured with mode "
                                     f"{self.cfg.mode!r}; this call needs mode {mode!r}")

    # ---- mode geneval ----------------------------------------------------------------
    def evaluate_folder(self, image_dir: Path, results_path: Path) -> list[dict]:
        """Run the evaluator on a layout folder; it writes ``results_path`` (official
        results.jsonl fields); returns its records (``correct`` as bool)."""
        self._require("geneval")
        results_path = Path(results_path)
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.unlink(missing_ok=True)  # never read a stale file from an earlier run
        self.run(image_dir=Path(image_dir), out=results_path)
        records = self._records(results_path, ("tag", "correct"))
        for r in records:
            r["correct"] = bool(r["correct"])
        if not records:
            raise ExternalJudgeError(f"{results_path}: the external evaluator wrote no results")
        return records

    # ---- modes detect and vqa: images + jsonl in, jsonl out ---------------------------
    def _exchange(self, images: list[Image.Image], rows: list[dict], answer_key: str) -> list:
        with tempfile.TemporaryDirectory(prefix="ablate-judge-") as tmp:
            work = self._work_dir() or Path(tmp)
            (work / "images").mkdir(parents=True, exist_ok=True)
            input_path, out_path = work / "input.jsonl", work / "output.jsonl"
            out_path.unlink(missing_ok=True)
            with input_path.open("w") as fp:
                for i, (image, row) in enumerate(zip(images, rows)):
                    path = (work / "images" / f"{i:05d}.png").resolve()
                    image.save(path)
                    fp.write(json.dumps({"id": i, "image": str(path), **row}) + "\n")
            self.run(image_dir=work / "images", input=input_path, out=out_path)
            by_id = {r["id"]: r[answer_key] for r in self._records(out_path, ("id", answer_key))}
        missing = [i for i in range(len(images)) if i not in by_id]
        if missing:
            raise ExternalJudgeError(f"external judge: no {answer_key!r} for image ids "
                                     f"{missing[:10]} in its output")
        return [by_id[i] for i in range(len(images))]

    def _work_dir(self) -> Path | None:
        if not self.cfg.work_dir:
            return None
        from ablate.data.stream import rank_and_world

        rank, world = rank_and_world()
        # ranks judge their own shares at the same time: one folder each
        return Path(self.cfg.work_dir) / f"rank{rank}" if world > 1 else Path(self.cfg.work_dir)

    def detect(self, images: list[Image.Image], metadata: list[dict]) -> list[dict[str, list[dict]]]:
        self._require("detect")
        if len(images) != len(metadata):
            raise ValueError(f"detect: {len(images)} images but {len(metadata)} metadata entries")
        return self._exchange(images, [{"metadata": m} for m in metadata], "detections")

    def answer(self, images: list[Image.Image], questions: list[list[str]]) -> list[list[str]]:
        self._require("vqa")
        if len(images) != len(questions):
            raise ValueError(f"answer: {len(images)} images but {len(questions)} question lists")
        answers = self._exchange(images, [{"questions": list(q)} for q in questions], "answers")
        for i, (qs, ans) in enumerate(zip(questions, answers)):
            if not isinstance(ans, list) or len(ans) != len(qs):
                raise ExternalJudgeError(f"external judge: image {i} has {len(qs)} questions but "
                                         f"the answers are {ans!r}")
        return [[str(a).strip().lower() for a in ans] for ans in answers]
