"""CogAgent-9B fine-tuning data: one screenshot and a conversation per JSON line -> training samples.

Two line formats, mixed freely in a `.jsonl` file (or every `.jsonl` file of a folder):

  * the published one (THUDM/CogAgent finetune/README.md): the user turn's content is the whole agent query, its
    `image` the screenshot, the assistant's content the target answer::

        {"messages": [{"role": "user", "content": "Task: ...\\n(Platform: Mac)\\n...", "image": "images/1.png"},
                      {"role": "assistant", "content": "Action: ...\\nGrounded Operation:CLICK(...)\\n<<...>>"}]}

  * the agent's fields, the query built by utils/agent/protocol.py in the fine-tuning data's order (history last)::

        {"image": "images/1.png", "task": "...", "platform": "Mac", "format": "action_op_sensitive",
         "history": [{"grounded_operation": "CLICK(box=[[1,2,3,4]])", "action": "Click ..."}], "answer": "..."}

Image paths are relative to the file's folder. Each assistant turn is a sample whose history holds the turns
before it; the screenshot goes with the first user turn, as the published fine-tuning moves it there. A line that
is not valid JSON, has another structure, or names a missing image is skipped with a SkippedDataWarning.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from cogvlm.utils.agent.protocol import HistoryStep, build_query
from cogvlm.utils.training.data import ASSISTANT, USER, Sample, SkippedDataWarning

AGENT_DATA_SUFFIX = ".jsonl"


def agent_data_files(path) -> list[Path]:
    """`path` itself if it is a file, else the .jsonl files of the folder, sorted; FileNotFoundError if none."""
    path = Path(path)
    if path.is_file():
        return [path]
    files = sorted(path.glob(f"*{AGENT_DATA_SUFFIX}")) if path.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no {AGENT_DATA_SUFFIX} file at {path}")
    return files


def _image(record: dict, folder: Path) -> Path:
    if not isinstance(record, dict) or not isinstance(record.get("image"), str):
        raise ValueError("no image path")
    image = folder / record["image"]
    if not image.is_file():
        raise ValueError(f"the image {image} does not exist")
    return image


def _history_step(step) -> HistoryStep:
    if isinstance(step, dict):
        return HistoryStep(step["grounded_operation"], step["action"])
    operation, action = step
    return HistoryStep(operation, action)


def _from_fields(record: dict, folder: Path) -> list[Sample]:
    """A record of the agent's fields -> one sample, the query built as the fine-tuning data orders it."""
    if not isinstance(record.get("task"), str) or not isinstance(record.get("answer"), str):
        raise ValueError('"task" and "answer" must be strings')
    try:
        history = [_history_step(step) for step in record.get("history", [])]
    except (KeyError, TypeError, ValueError):
        raise ValueError('each "history" step is {"grounded_operation", "action"} or a pair') from None
    query = build_query(record["task"], history, record.get("platform", "WIN"),
                        record.get("format", "action_op_sensitive"), history_last=True)
    return [Sample(_image(record, folder), query, record["answer"])]


def _from_messages(messages, folder: Path) -> list[Sample]:
    """A published conversation -> one sample per assistant turn, with the turns before it as history."""
    if not isinstance(messages, list) or not messages or len(messages) % 2:
        raise ValueError('"messages" must alternate user and assistant turns, ending with an assistant turn')
    for i, turn in enumerate(messages):
        expected = (USER, ASSISTANT)[i % 2]
        if not isinstance(turn, dict) or turn.get("role") != expected or not isinstance(turn.get("content"), str):
            raise ValueError(f"turn {i} should have role {expected!r} and string content")
    images = [turn for turn in messages if turn.get("image")]
    if len(images) != 1:
        raise ValueError(f"a conversation needs exactly one image, found {len(images)}")
    image = _image(images[0], folder)
    pairs = [(messages[i]["content"], messages[i + 1]["content"]) for i in range(0, len(messages), 2)]
    return [Sample(image, query, answer, pairs[:i]) for i, (query, answer) in enumerate(pairs)]


def agent_samples(path) -> list[Sample]:
    """The samples of a .jsonl file (or of every .jsonl file in a folder), skipping bad lines with a warning."""
    samples: list[Sample] = []
    total = skipped = 0
    for data_file in agent_data_files(path):
        for number, line in enumerate(data_file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            total += 1
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("the line is not a JSON object")
                samples += (_from_messages(record["messages"], data_file.parent) if "messages" in record
                            else _from_fields(record, data_file.parent))
            except ValueError as problem:          # includes JSON errors and protocol.py's one-line errors
                warnings.warn(f"skipped {data_file} line {number}: {problem}", SkippedDataWarning, stacklevel=2)
                skipped += 1
    if skipped:
        warnings.warn(f"skipped {skipped} of {total} lines under {path}", SkippedDataWarning, stacklevel=2)
    if not samples:
        raise FileNotFoundError(f"no usable sample in {path}")
    return samples
