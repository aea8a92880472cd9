"""The CogAgent-9B GUI agent from the command line: screenshot + task in, the next operation out.

    python basic_demo/agent_demo.py --from_pretrained cogagent-9b-20241220 --platform WIN \\
        --format_key action_op_sensitive --output_image_path results
    python basic_demo/agent_demo.py ... --format action_operation_sensitive    # the same, as issue 13 spells it
    python basic_demo/agent_demo.py ... --execute dry_run      # also print the input events it would make

Each round asks for a screenshot (path or URL) and the task. The query is built as the published demos build it
(task, the numbered history of this task's earlier steps, platform, answer format); the answer is parsed into its
operation, which is printed with the point it acts at, and the screenshot is saved with the box and that point
drawn ({screenshot name}_{round}.png in --output_image_path). At the task prompt, Enter asks for the next step of
the same task and "continue" asks the model to continue its answer ("[Continue]"); typing a task starts a new one.
"clear" forgets the task and its history, "stop" or end of input ends. An answer that cannot be parsed is
reported with the reason and is not added to the history.

--execute dry_run prints the input events of each step; --execute desktop performs them on this computer with
pyautogui (pip install pyautogui; the screenshots must then be of this screen). A step tagged <<敏感操作>>, or
untagged, runs only after a "y" at the terminal; END finishes the task.

The agent works with any checkpoint the chat CLI loads; the default is the chat CLI's small captcha reader,
which is no agent: its answers are reported as unparsed.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from cogvlm import warn_if_other_checkout
from cogvlm.basic_demo.cli_demo_sat import CLEAR, DEFAULT_CHECKPOINT, EXIT_INTERRUPTED, STOP, Console, load_chat
from cogvlm.utils.agent.answer import AgentStep, Unparsed, format_operation, parse_answer
from cogvlm.utils.agent.drawing import draw_step
from cogvlm.utils.agent.executor import DesktopExecutor, DryRunExecutor, Executor, Result, ask_on_terminal
from cogvlm.utils.agent.protocol import AnswerFormat, HistoryStep, Platform, build_query, format_key
from cogvlm.utils.inference.messages import describe, message
from cogvlm.utils.inference.options import add_decoding_arguments
from cogvlm.utils.quantization.options import add_quant_arguments

CONTINUE = "continue"
EXECUTORS = ("none", "dry_run", "desktop")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from_pretrained", default=str(DEFAULT_CHECKPOINT),
                        help="checkpoint folder or published name (the CogAgent-9B checkpoint for a real agent)")
    parser.add_argument("--local_tokenizer", default=None, help="tokenizer file or folder (default: the checkpoint's)")
    parser.add_argument("--platform", default=Platform.MAC.value, choices=[p.value for p in Platform],
                        help="the screenshots' system, as the model was trained (default Mac, as published)")
    parser.add_argument("--format_key", "--format", dest="format_key", default=AnswerFormat.ACTION_OP_SENSITIVE.value,
                        type=format_key, choices=[f.value for f in AnswerFormat],
                        help="the answer format, the published key; 'op' may be spelled 'operation' "
                             "(default %(default)s)")
    parser.add_argument("--output_image_path", default="results", help="folder for the screenshots with the step drawn")
    parser.add_argument("--execute", default="none", choices=EXECUTORS,
                        help="none: only show the step; dry_run: print its input events; desktop: perform them")
    parser.add_argument("--max_length", type=int, default=4096, help="max tokens of prompt + answer (published 4096)")
    parser.add_argument("--top_k", type=int, default=1, help="top-k sampling; 1 is greedy (published)")
    parser.add_argument("--top_p", type=float, default=0.8, help="nucleus sampling mass")
    parser.add_argument("--temperature", type=float, default=0.6, help="sampling temperature")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed")
    parser.add_argument("--version", default=None, choices=["chat", "vqa", "chat_old", "base"],
                        help="prompt template; a checkpoint's text_processor_version overrides it")
    parser.add_argument("--chinese", action="store_true", help="Chinese interface")
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--bf16", action="store_true")
    add_quant_arguments(parser)
    add_decoding_arguments(parser)
    args = parser.parse_args(argv)
    if args.fp16 and args.bf16:
        parser.error(message("fp16_and_bf16", args.chinese))
    if args.max_length < 2:
        parser.error(message("max_length_too_small", args.chinese))
    return args


@dataclass(frozen=True)
class StepReport:
    """One round: the query sent, the model's answer, what it parsed to, the drawing, the execution result."""

    round: int
    query: str
    response: str
    parsed: AgentStep | Unparsed
    size: tuple[int, int]       # the screenshot's (width, height)
    drawn: Path | None = None
    draw_error: str | None = None
    result: Result | None = None
    finished: bool = False


class AgentSession:
    """The agent's state across rounds: the current task and its history steps. `chat` is a ChatModel (or any
    object with its preprocess / answer); `executor` acts on each parsed step, or None."""

    def __init__(self, chat, platform: Platform, answer_format: AnswerFormat, sampling, output_dir: str | Path,
                 executor: Executor | None = None):
        self.chat, self.platform, self.answer_format, self.sampling = chat, platform, answer_format, sampling
        self.output_dir = Path(output_dir)
        self.executor = executor
        self.task: str | None = None
        self.history: list[HistoryStep] = []
        self.round = 0
        self.screen_size: tuple[int, int] | None = None    # of the last screenshot (the dry run acts on it)

    def clear(self) -> None:
        self.task, self.history = None, []

    def step(self, picture, name: str, line: str) -> StepReport:
        """Answer one round on `picture` (a PIL image named `name`). `line` is a new task, "" for the next step
        of the current task, or "continue". ValueError (one line) when there is no task."""
        if line not in ("", CONTINUE):
            self.task, self.history = line, []
        if self.task is None:
            raise ValueError(message("agent_no_task"))
        query = build_query(self.task, self.history, self.platform, self.answer_format,
                            continue_task=line == CONTINUE)
        response = self.chat.answer(query, [], self.chat.preprocess(picture), self.sampling)
        self.round += 1
        self.screen_size = picture.size
        parsed = parse_answer(response)
        if not isinstance(parsed, AgentStep):
            return StepReport(self.round, query, response, parsed, picture.size)
        self.history.append(parsed.history_step())
        drawn, draw_error = self._draw(picture, parsed, name)
        result = self.executor.execute(parsed) if self.executor is not None else None
        finished = parsed.operation.name == "END"
        if finished:
            self.clear()
        return StepReport(self.round, query, response, parsed, picture.size, drawn, draw_error, result, finished)

    def _draw(self, picture, parsed: AgentStep, name: str) -> tuple[Path | None, str | None]:
        if parsed.box is None:
            return None, None
        stem = Path(name.split("?")[0].rstrip("/")).stem or "screenshot"
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            return draw_step(picture, parsed, self.output_dir / f"{stem}_{self.round}.png"), None
        except OSError as problem:          # an unwritable folder must not end the session
            return None, message("boxes_not_saved", folder=self.output_dir, detail=describe(problem))


def make_executor(kind: str, session: AgentSession, chinese: bool = False) -> Executor | None:
    """The executor of --execute (None for "none"); sensitive and untagged steps ask at the terminal. A dry run
    acts on the last screenshot's size; the desktop on the screen's (see executor.py)."""
    confirm = functools.partial(ask_on_terminal, chinese=chinese)
    if kind == "dry_run":
        return DryRunExecutor(lambda: session.screen_size, confirm)
    if kind == "desktop":
        return DesktopExecutor(confirm)
    return None


def show(report: StepReport, console: Console) -> None:
    chinese = console.chinese
    console.say(message("agent_query", chinese, round=report.round, query=report.query))
    console.say(message("model_prefix", chinese) + report.response)
    parsed = report.parsed
    if not isinstance(parsed, AgentStep):
        console.say(message("agent_unparsed", chinese, reason=parsed.reason))
        return
    console.say(message("agent_operation", chinese, operation=format_operation(parsed.operation)))
    width, height = report.size
    point = parsed.action_point(width, height)
    if point is not None:
        console.say(message("agent_point", chinese, x=point[0], y=point[1], width=width, height=height))
    if report.drawn is not None:
        console.say(message("boxes_drawn", chinese, path=report.drawn))
    if report.draw_error is not None:
        console.error(report.draw_error)
    if parsed.sensitive:
        console.say(message("agent_sensitive", chinese))
    if report.result is not None:
        reason = f": {report.result.reason}" if report.result.reason else ""
        console.say(message("agent_execution", chinese, outcome=report.result.outcome.value, reason=reason))
    if report.finished:
        console.say(message("agent_finished", chinese))


def interactive(session: AgentSession, console: Console) -> None:
    from cogvlm.utils.preprocessing.image_processor import load_image

    console.say(message("agent_welcome", console.chinese))
    while True:
        source = console.ask("agent_screenshot_prompt")
        if source is None or source == STOP:
            return
        if source == CLEAR:
            session.clear()
            continue
        try:
            picture = load_image(source)
        except ValueError as problem:
            console.error(problem)
            continue
        line = console.ask("agent_task_prompt")
        if line is None or line == STOP:
            return
        if line == CLEAR:
            session.clear()
            continue
        try:
            report = session.step(picture, source, line)
        except console.recoverable as problem:      # no task, a prompt too long, a failure inside the model
            console.error(problem)
            continue
        except KeyboardInterrupt:
            console.note(message("answer_stopped", console.chinese))
            continue
        show(report, console)
        console.say(message("agent_history", console.chinese, count=len(session.history)))


def run(args, console: Console) -> int:
    from cogvlm.utils.checkpoint_io.download import checkpoint_not_found

    missing = checkpoint_not_found(args.from_pretrained)       # before the seconds torch and SAT take to import
    if missing is not None:
        console.error(message("checkpoint_error", args.chinese, detail=missing))
        return 1
    if args.execute == "desktop" and importlib.util.find_spec("pyautogui") is None:     # before loading the model
        console.error("--execute desktop needs pyautogui (pip install pyautogui)")
        return 1
    chat = load_chat(args, console)
    if chat is None:
        return 1
    from cogvlm.utils.inference.generation import SamplingConfig

    sampling = SamplingConfig(max_length=args.max_length, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, seed=args.seed)
    session = AgentSession(chat, Platform(args.platform), AnswerFormat(args.format_key), sampling,
                           args.output_image_path)
    try:
        session.executor = make_executor(args.execute, session, args.chinese)
    except Exception as problem:        # pyautogui fails on import without a display (e.g. KeyError 'DISPLAY')
        console.error(f"--execute {args.execute}: {type(problem).__name__}: {describe(problem)}")
        return 1
    interactive(session, console)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    console = Console(args.chinese)
    try:
        return run(args, console)
    except KeyboardInterrupt:
        console.say()
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    warn_if_other_checkout(__file__)
    sys.exit(main())
