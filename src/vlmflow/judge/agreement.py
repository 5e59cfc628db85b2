"""Judge vs. human agreement on "is object X mentioned in text T?" (paper Table A1).

Each decision is one (text, object, human yes/no). The judge answers the same question through
its `mentions` method, one call per text with all of that text's objects, and the harness reports
the confusion matrix, true-positive rate (objects the judge spots), true-negative rate (objects it
does not invent) and accuracy. The paper's GPT-4 judge: TPR 95.2%, TNR 96.5%, accuracy 95.7%,
inter-human agreement 92.2%.

Label files are JSON lines of either form:
    {"id": ..., "split": ..., "reference": T1, "candidate": T2,
     "objects": [{"object": "dog", "reference": true, "candidate": false}, ...]}
    {"text": T, "object": "dog", "mentioned": true}
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from vlmflow.errors import VlmflowError
from vlmflow.judge.protocol import JudgeReplyError

PAPER = {"tpr": 0.952, "tnr": 0.965, "accuracy": 0.957, "human_agreement": 0.922}


@dataclass(frozen=True)
class Decision:
    """One human answer: is `object` mentioned in `text`?"""

    text: str
    object: str
    human: bool
    item: str = ""  # pair id and side, for reading disagreements
    split: str = ""


@dataclass(frozen=True)
class Agreement:
    """Confusion matrix of judge (rows) against humans (columns), and the rates from it."""

    judge_yes_human_yes: int
    judge_yes_human_no: int
    judge_no_human_yes: int
    judge_no_human_no: int
    failed: int = 0  # decisions whose text got no usable answer (not counted above)
    disagreements: tuple[tuple[Decision, bool], ...] = field(default=(), repr=False)

    @property
    def total(self) -> int:
        return (
            self.judge_yes_human_yes
            + self.judge_yes_human_no
            + self.judge_no_human_yes
            + self.judge_no_human_no
        )

    @property
    def tpr(self) -> float:
        positives = self.judge_yes_human_yes + self.judge_no_human_yes
        return self.judge_yes_human_yes / positives if positives else float("nan")

    @property
    def tnr(self) -> float:
        negatives = self.judge_no_human_no + self.judge_yes_human_no
        return self.judge_no_human_no / negatives if negatives else float("nan")

    @property
    def accuracy(self) -> float:
        correct = self.judge_yes_human_yes + self.judge_no_human_no
        return correct / self.total if self.total else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "confusion": {
                "judge_yes_human_yes": self.judge_yes_human_yes,
                "judge_yes_human_no": self.judge_yes_human_no,
                "judge_no_human_yes": self.judge_no_human_yes,
                "judge_no_human_no": self.judge_no_human_no,
            },
            "decisions": self.total,
            "failed": self.failed,
            "tpr": self.tpr,
            "tnr": self.tnr,
            "accuracy": self.accuracy,
            "disagreements": [
                {"item": d.item, "object": d.object, "human": d.human, "judge": j}
                for d, j in self.disagreements
            ],
        }

    def table(self) -> str:
        """The paper's Table A1 layout, with its numbers for reference."""
        return "\n".join(
            [
                "                 humans: yes    no",
                f"judge yes             {self.judge_yes_human_yes:>6} {self.judge_yes_human_no:>5}",
                f"judge no              {self.judge_no_human_yes:>6} {self.judge_no_human_no:>5}",
                "",
                f"true-positive rate  {self.tpr:7.1%}   (paper, GPT-4: {PAPER['tpr']:.1%})",
                f"true-negative rate  {self.tnr:7.1%}   (paper, GPT-4: {PAPER['tnr']:.1%})",
                f"accuracy            {self.accuracy:7.1%}   (paper, GPT-4: "
                f"{PAPER['accuracy']:.1%}; humans among themselves: "
                f"{PAPER['human_agreement']:.1%})",
                f"decisions           {self.total:>7}"
                + (f"   failed: {self.failed}" if self.failed else ""),
            ]
        )


def shipped_labels() -> Path:
    """The hand-labelled set that ships with vlmflow (see `data/README.md`)."""
    return Path(str(resources.files("vlmflow.judge") / "data" / "labels.jsonl"))


def load_labels(path: str | Path, split: str | None = None) -> list[Decision]:
    """Decisions from a JSON-lines file (both forms above); `split` keeps one split only."""
    path = Path(path)
    if not path.is_file():
        raise VlmflowError(f"label file {path} not found: pass a JSON-lines file of decisions")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise VlmflowError(f"label file {path} is not UTF-8 text: give a JSON-lines file") from None
    decisions: list[Decision] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if split is not None and row.get("split") != split:
                continue
            if "objects" in row:
                for side in ("reference", "candidate"):
                    for obj in row["objects"]:
                        item = f"{row.get('id', number)}:{side}"
                        decisions.append(
                            Decision(
                                row[side],
                                obj["object"],
                                bool(obj[side]),
                                item,
                                row.get("split", ""),
                            )
                        )
            else:
                decisions.append(
                    Decision(
                        row["text"],
                        row["object"],
                        bool(row["mentioned"]),
                        str(row.get("id", number)),
                        row.get("split", ""),
                    )
                )
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise VlmflowError(f"{path}:{number}: not a label line ({err})") from None
    if not decisions:
        raise VlmflowError(f"{path} holds no decisions" + (f" in split {split!r}" if split else ""))
    return decisions


def measure(
    decisions: Sequence[Decision],
    ask: Callable[[str, Sequence[str]], Sequence[bool]],
    progress: Callable[[int, int], None] | None = None,
) -> Agreement:
    """Ask `ask(text, objects)` once per distinct text and tally against the human answers.

    A text whose answer is unusable (`JudgeReplyError`) counts as `failed`, not as "no".
    """
    by_text: dict[str, list[Decision]] = {}
    for d in decisions:
        by_text.setdefault(d.text, []).append(d)
    counts = {"yy": 0, "yn": 0, "ny": 0, "nn": 0}
    failed = 0
    wrong: list[tuple[Decision, bool]] = []
    for done, (text, group) in enumerate(by_text.items(), 1):
        names = list(dict.fromkeys(d.object for d in group))
        try:
            answers = dict(zip(names, ask(text, names), strict=True))
        except JudgeReplyError:
            failed += len(group)
            continue
        for d in group:
            judged = bool(answers[d.object])
            counts[("y" if judged else "n") + ("y" if d.human else "n")] += 1
            if judged != d.human:
                wrong.append((d, judged))
        if progress is not None:
            progress(done, len(by_text))
    return Agreement(counts["yy"], counts["yn"], counts["ny"], counts["nn"], failed, tuple(wrong))
