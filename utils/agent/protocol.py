"""The CogAgent-9B-20241220 query: task, history steps, platform and answer format in one user message.

Published construction (THUDM/CogAgent README "Prompt concatenation", inference/cli_demo.py, app/client.py),
as a Python string::

    "Task: {task}\nHistory steps: \n0. {grounded operation}\t{action}\n1. ...\n(Platform: {WIN|Mac|Mobile})\n"
    "(Answer in {format} format.)"

"History steps: " (with its trailing space) is present even with no history; steps are numbered from 0, a TAB
between the grounded operation and the action. The inference demos end the query right after the format line;
the README and the desktop client add a newline after it (`format_newline`). The screenshot goes with the query
as the message's image; the model answers with the lines the format names (see answer.py).

The fine-tuning data (finetune/README*.md) orders it differently: platform and format first, then "History
steps: " with each step on a line of its own, every line ending in a newline (`history_last`)::

    Task: {task}\n(Platform: Mac)\n(Answer in Action-Operation-Sensitive format.)\nHistory steps: \n0. {op}\t{action}\n

Continue mode (README "Continue field", commit cb0faf0) appends "[Continue]\\n" right after the task:
``f'{task}[Continue]\\n{history}{platform}{format}'``. The README does not say how it meets the newline that opens
the history string; it is applied literally here, so the query reads "Task: ...[Continue]\\n\\nHistory steps: ".
"""
from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

TASK_PREFIX = "Task: "
HISTORY_HEADER = "\nHistory steps: "
CONTINUE_MARK = "[Continue]\n"


class Platform(str, enum.Enum):
    """The operating systems the model was trained on; the value is written into the query (case-sensitive)."""

    WIN = "WIN"        # Windows 10, 11
    MAC = "Mac"        # macOS 14, 15
    MOBILE = "Mobile"  # Android 13-15


class AnswerFormat(enum.Enum):
    """The answer formats; the value is the published format key (cli_demo --format_key), `.text` what the query
    says. Each format names the lines of the answer, in order (Sensitive: the <<一般操作>> / <<敏感操作>> tag)."""

    ACTION_OP_SENSITIVE = "action_op_sensitive"
    STATUS_PLAN_ACTION_OP = "status_plan_action_op"
    STATUS_ACTION_OP_SENSITIVE = "status_action_op_sensitive"
    STATUS_ACTION_OP = "status_action_op"
    ACTION_OP = "action_op"
    # Used by app/client.py only, not in the README's list.
    STATUS_PLAN_ACTION_OP_SENSITIVE = "status_plan_action_op_sensitive"

    @property
    def fields(self) -> tuple[str, ...]:
        """The answer's parts in order: of Status, Plan, Action, Operation, Sensitive."""
        names = {"status": "Status", "plan": "Plan", "action": "Action", "op": "Operation",
                 "sensitive": "Sensitive"}
        return tuple(names[part] for part in self.value.split("_"))

    @property
    def text(self) -> str:
        return f"(Answer in {'-'.join(self.fields)} format.)"

    @property
    def asks_sensitivity(self) -> bool:
        return "Sensitive" in self.fields


DEFAULT_FORMAT = AnswerFormat.ACTION_OP_SENSITIVE      # the demos' default


@dataclass(frozen=True)
class HistoryStep:
    """One earlier step as the query repeats it: the grounded operation and the action, as the model wrote them
    (the text after "Grounded Operation:" and after "Action:")."""

    grounded_operation: str
    action: str


def _one_line(name: str, value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError(f"{name} must be one line: a newline would break the query's line structure ({value!r})")
    return value


def history_lines(history: Sequence[HistoryStep]) -> list[str]:
    """One "{i}. {operation}\\t{action}" per step, numbered from 0."""
    return [f"{index}. {_one_line('a history operation', step.grounded_operation)}\t"
            f"{_one_line('a history action', step.action)}" for index, step in enumerate(history)]


def history_text(history: Sequence[HistoryStep]) -> str:
    """"\\nHistory steps: " followed by "\\n" + line for each of history_lines."""
    return HISTORY_HEADER + "".join("\n" + line for line in history_lines(history))


def build_query(task: str, history: Sequence[HistoryStep] = (), platform: Platform | str = Platform.WIN,
                answer_format: AnswerFormat | str = DEFAULT_FORMAT, *, continue_task: bool = False,
                format_newline: bool = False, history_last: bool = False) -> str:
    """The query text for one step; byte-identical to the published construction (see the module docstring).

    platform / answer_format may be given by value ("WIN", "action_op_sensitive"). continue_task asks the model
    to go on with a task it was answering ("[Continue]"); format_newline adds the README's final newline;
    history_last builds the fine-tuning data's order instead (format_newline does not apply there).
    Raises ValueError (one line) for an empty task, an unknown platform or format, or a newline inside a history
    step (the history is one line per step).
    """
    if not task.strip():
        raise ValueError("the task is empty: say what the agent should do")
    platform = parse_platform(platform)
    answer_format = parse_format(answer_format)
    head = TASK_PREFIX + task + (CONTINUE_MARK if continue_task else "")
    settings = f"(Platform: {platform.value})\n{answer_format.text}"
    if history_last:
        return f"{head}\n{settings}{HISTORY_HEADER}\n" + "".join(line + "\n" for line in history_lines(history))
    tail = "\n" if format_newline else ""
    return f"{head}{history_text(history)}\n{settings}{tail}"


def parse_platform(value: Platform | str) -> Platform:
    """A Platform from itself or its value ("WIN", "Mac", "Mobile"; case-sensitive, as the model was trained)."""
    if isinstance(value, Platform):
        return value
    try:
        return Platform(value)
    except ValueError:
        raise ValueError(f"unknown platform {value!r}: choose one of "
                         f"{', '.join(p.value for p in Platform)}") from None


def format_key(value: str) -> str:
    """The published format key (cli_demo --format_key) of `value`, which may also spell "op" out as "operation",
    as issue 13's command line does ("action_operation_sensitive" -> "action_op_sensitive")."""
    return "_".join("op" if part == "operation" else part for part in value.split("_"))


def parse_format(value: AnswerFormat | str) -> AnswerFormat:
    """An AnswerFormat from itself or its format key ("action_op_sensitive", or spelled out: see format_key)."""
    if isinstance(value, AnswerFormat):
        return value
    try:
        return AnswerFormat(format_key(value))
    except ValueError:
        raise ValueError(f"unknown answer format {value!r}: choose one of "
                         f"{', '.join(f.value for f in AnswerFormat)}") from None
