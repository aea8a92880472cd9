"""Chat about an image in the browser (Gradio), with the published web demo's flags.

    python basic_demo/web_demo.py                                   # the embedded captcha reader, on 127.0.0.1:7860
    python basic_demo/web_demo.py --from_pretrained cogagent-chat --local_tokenizer PATH --bf16 --port 8080
    python basic_demo/web_demo.py --from_pretrained cogagent-9b-20241220 --bf16       # the GUI agent (Agent tab)
    python basic_demo/web_demo.py --host 0.0.0.0                    # reachable from other machines

Upload an image, then chat about it: answers stream in, the sampling controls apply to the next answer, "Clear"
starts the conversation over, a new image starts a new one. Answers with [[x0,y0,x1,y1]] boxes are shown with their
boxes drawn on the image. The Agent tab builds CogAgent's GUI-agent query from a task and shows the parsed plan,
next action and grounded operation, with its box on the screenshot. A 9B checkpoint opens it on CogAgent-9B (a
platform and an answer format to choose; the status and the sensitivity are shown, and the point the operation
acts at is drawn): upload the next screenshot and ask again with the same task, and the query lists the steps
taken so far; a new task or "Clear" starts over. The page only shows the step, it never acts on it. Bad input
(no image, an unreadable image, a prompt too long for the max length) is a one-line error on the page; the page
goes on working.

Nothing leaves the machine: Gradio's analytics are off (unless GRADIO_ANALYTICS_ENABLED says otherwise) and no
public link is made without --share. One process serves one model: requests are answered one at a time, in order.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from cogvlm import warn_if_other_checkout
from cogvlm.basic_demo.cli_demo_sat import (Console, add_model_arguments, add_sampling_arguments,
                                            check_common_arguments)
from cogvlm.utils.grounding.agent_modes import AGENT_MODES, AgentStep, default_mode
from cogvlm.utils.inference.messages import describe, message
from cogvlm.utils.inference.session import Session, mark_answer_boxes, open_image, stream_turn

if TYPE_CHECKING:
    from cogvlm.utils.inference.chat import ChatModel
    from cogvlm.utils.inference.generation import SamplingConfig

DEFAULT_HOST = "127.0.0.1"          # this machine only; --host 0.0.0.0 serves the network
DEFAULT_PORT = 7860                 # Gradio's usual port
TITLE = "CogVLM / CogAgent"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sampling_arguments(parser)          # the page's sampling controls start at these values
    add_model_arguments(parser)
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to serve on (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to serve on (default {DEFAULT_PORT})")
    parser.add_argument("--share", action="store_true", help="also make a public gradio.live link (off by default)")
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    if not 0 < args.port < 65536:
        parser.error(message("port_out_of_range", port=args.port))
    return args


# --- what the page shows, computed without Gradio ------------------------------------------------------------


class Keep:
    """A View value that leaves its part of the page as it is."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP = Keep()


@dataclass(frozen=True)
class View:
    """The page after a request: the session (kept by Gradio between requests), the chat as Gradio's messages, the
    image to show, a status line ('' or "Error: ..."), the agent step's description, and the new text of the query
    box. KEEP leaves a part as it is: the image while an answer streams (not re-sent with every piece), the query
    box while the user may be typing the next query."""
    session: Session
    messages: list[dict[str, str]]
    picture: Any
    status: str = ""
    agent_step: str = ""
    draft: str | Keep = KEEP

    def outputs(self) -> tuple:
        """The values in the order of build_demo's `outputs`."""
        return self.session, self.messages, self.picture, self.status, self.agent_step


def chat_messages(history: list[tuple[str, str]]) -> list[dict[str, str]]:
    """The turns as a chat shows them: user and assistant messages, in order."""
    return [{"role": role, "content": text} for query, answer in history
            for role, text in (("user", query), ("assistant", answer))]


def error_line(problem: BaseException, upload_path: str | None = None) -> str:
    """"Error: <one line>"; an uploaded file is named as the user named it, not by the server's temporary path."""
    text = describe(problem)
    if upload_path:
        text = text.replace(upload_path, Path(upload_path).name)
    return message("error_prefix") + text


SENSITIVITY = {True: "sensitive: confirm it before acting", False: "general"}


def describe_step(step: AgentStep) -> str:
    """The agent step, one labelled line per part it has (Markdown)."""
    target = step.box if step.box is not None else (f"[[{step.point[0]:03d},{step.point[1]:03d}]]"
                                                    if step.point is not None else None)
    parts = (("Status", step.status), ("Plan", step.plan), ("Next action", step.action),
             ("Operation", step.operation), ("Target", target), ("Sensitivity", SENSITIVITY.get(step.sensitive)),
             ("Not read", step.unread))
    lines = [f"**{label}:** {value}" for label, value in parts if value is not None]
    return "\n\n".join(lines) if lines else message("no_agent_step")


@dataclass(frozen=True)
class SamplingLimits:
    """The range of the max-length control: 2 tokens up to the model's sequence length."""
    max_length: int
    min_length: int = 2


@dataclass
class DemoPage:
    """The page's requests, on one model. `defaults` fills what the page has no control for (seed, repetition
    penalty) and the controls' first values."""
    chat: ChatModel
    defaults: SamplingConfig
    limits: SamplingLimits | None = None        # None: from the model's configuration
    agent_mode: str | None = None               # the Agent tab's first choice; None: the loaded model's own

    def __post_init__(self) -> None:
        if self.limits is None:
            self.limits = SamplingLimits(self.chat.config.language.max_sequence_length)
        if self.agent_mode is None:
            self.agent_mode = default_mode(self.chat.version)

    def sampling(self, temperature: float, top_p: float, top_k: float, max_length: float) -> SamplingConfig:
        """The SamplingConfig of the controls' values; ValueError (one line) for a value out of range."""
        if not self.limits.min_length <= max_length <= self.limits.max_length:
            raise ValueError(f"the max length must be between {self.limits.min_length} and "
                             f"{self.limits.max_length}, got {max_length:g}")
        if temperature < 0 or not 0 <= top_p <= 1 or top_k < 0:
            raise ValueError(f"temperature and top k must be at least 0 and top p between 0 and 1, got "
                             f"{temperature:g}, {top_k:g} and {top_p:g}")
        return replace(self.defaults, temperature=float(temperature), top_p=float(top_p), top_k=int(top_k),
                       max_length=int(max_length))

    def open(self, path: str | None, previous: Session | None = None) -> View:
        """A new image (or none: the upload was removed) starts a new conversation; it goes on with `previous`'s
        agent task (a new screenshot is the task's next step)."""
        previous = previous or Session()
        if not path:
            return View(Session().carry_on(previous), [], None)
        try:
            session = open_image(self.chat, path).carry_on(previous)
        except ValueError as problem:           # not an image, truncated, unsupported mode
            return View(Session().carry_on(previous), [], None, error_line(problem, path))
        return View(session, [], session.picture)

    def clear(self, session: Session) -> View:
        session.clear()
        return View(session, [], session.shown)

    def send(self, session: Session, query: str, temperature: float, top_p: float, top_k: float,
             max_length: float) -> Iterator[View]:
        """Answer a chat query, streaming; then draw the answer's boxes, if any. The query box is emptied as the
        answer starts, and given the query back after an error, to be corrected."""
        yield from self._turn(session, query, (temperature, top_p, top_k, max_length),
                              lambda answer: (mark_answer_boxes(session.picture, answer), ""), query_box=True)

    def ask_agent(self, session: Session, mode_name: str, task: str, platform: str | None,
                  answer_format: str | None, temperature: float, top_p: float, top_k: float,
                  max_length: float) -> Iterator[View]:
        """Ask the agent mode's query for `task`, streaming; then show the parsed step and draw its target. The
        task stays in its box: the next screenshot usually goes with the same task. A mode whose query lists the
        task's steps is asked with the session's steps of this task, and a step read from the answer joins them."""
        try:
            mode = AGENT_MODES[mode_name]
            steps = session.agent_steps(mode_name, task) if mode.steps_in_query else []
            query = mode.query(task, platform or None, answer_format or None, steps)
        except KeyError:
            yield self._failed(session, f"unknown agent mode {mode_name!r}")
            return
        except ValueError as problem:           # an empty task, a platform or format the mode does not offer
            yield self._failed(session, problem)
            return

        if mode.steps_in_query:         # a valid query: its task is now the one worked on
            session.work_on(mode_name, task)

        def show(answer: str) -> tuple[Any, str]:
            step = mode.parse(answer)
            session.record_agent_step(step)
            return mode.mark(session.picture, step), describe_step(step)

        yield from self._turn(session, query, (temperature, top_p, top_k, max_length), show, query_box=False,
                              with_history=not mode.steps_in_query)

    def _turn(self, session: Session, query: str, controls: tuple, show, query_box: bool,
              with_history: bool = True) -> Iterator[View]:
        """Stream one turn; at its end `show(answer)` gives the marked picture (or None) and the agent step text.
        With `query_box`, the query came from the query box: it is emptied with the first text and given the query
        back after an error. Without `with_history` the model is not given the chat's earlier turns. Errors
        (before or during the answer) end the turn with one line; the session stays as it was."""
        before = chat_messages(session.history)
        try:
            sampling = self.sampling(*controls)
            for count, text in enumerate(stream_turn(self.chat, session, query, sampling, with_history)):
                yield View(session, before + chat_messages([(query, text)]), KEEP,
                           draft="" if query_box and count == 0 else KEEP)
            marked, step = show(session.history[-1][1])
        except (ValueError, RuntimeError) as problem:   # bad input; a failure inside the model (one process)
            yield self._failed(session, problem, query if query_box else KEEP)
            return
        session.marked = marked
        yield View(session, chat_messages(session.history), session.shown, agent_step=step)

    @staticmethod
    def _failed(session: Session, problem: BaseException | str, draft: str | Keep = KEEP) -> View:
        status = problem if isinstance(problem, str) else describe(problem)
        return View(session, chat_messages(session.history), session.shown, message("error_prefix") + status,
                    draft=draft)


def mode_choices(mode_name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The platforms and answer formats the agent mode offers (empty: the control is hidden)."""
    mode = AGENT_MODES[mode_name]
    return mode.platforms, mode.formats


# --- the page ------------------------------------------------------------------------------------------------


def build_demo(page: DemoPage, heading: str):
    """The Gradio Blocks of the page: layout and wiring only, every request is a DemoPage method."""
    import gradio as gr

    controls_default = page.defaults
    first_mode = page.agent_mode
    platforms, formats = mode_choices(first_mode)
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(heading)
        session = gr.State(Session())
        with gr.Row():
            with gr.Column(scale=2):
                upload = gr.File(label="Image", file_count="single", type="filepath", elem_id="image-upload")
                picture = gr.Image(label="Image and boxes", type="pil", format="png", interactive=False,
                                   buttons=["download", "fullscreen"], elem_id="picture")
                with gr.Accordion("Sampling", open=False):
                    temperature = gr.Slider(0, 2, value=controls_default.temperature, step=0.01,
                                            label="Temperature", elem_id="temperature")
                    top_p = gr.Slider(0, 1, value=controls_default.top_p, step=0.01, label="Top p",
                                      elem_id="top-p")
                    top_k = gr.Slider(0, 100, value=controls_default.top_k, step=1,
                                      label="Top k (1 is greedy, 0 is off)", elem_id="top-k")
                    max_length = gr.Slider(page.limits.min_length, page.limits.max_length,
                                           value=min(controls_default.max_length, page.limits.max_length), step=1,
                                           label="Max length (prompt + answer tokens)", elem_id="max-length")
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Chat", elem_id="chatbot", height=420, buttons=["copy", "copy_all"])
                status = gr.Markdown(elem_id="status")
                with gr.Tab("Chat"):
                    query = gr.Textbox(label="Query", placeholder="Ask about the image", elem_id="query")
                    with gr.Row():
                        send = gr.Button("Send", variant="primary", elem_id="send")
                        clear = gr.Button("Clear", elem_id="clear")
                with gr.Tab("Agent", elem_id="agent-tab"):
                    mode = gr.Dropdown(list(AGENT_MODES), value=first_mode, label="Agent model", elem_id="agent-mode")
                    task = gr.Textbox(label="Task", placeholder="e.g. search for CogVLM on GitHub",
                                      elem_id="agent-task")
                    platform = gr.Dropdown(list(platforms), value=platforms[0] if platforms else None,
                                           label="Platform", visible=bool(platforms), elem_id="agent-platform")
                    answer_format = gr.Dropdown(list(formats), value=formats[0] if formats else None,
                                                label="Answer format", visible=bool(formats), elem_id="agent-format")
                    ask = gr.Button("Ask for the next step", variant="primary", elem_id="agent-ask")
                    agent_step = gr.Markdown(elem_id="agent-step")

        sampling_inputs = [temperature, top_p, top_k, max_length]
        outputs = [session, chatbot, picture, status, agent_step]
        # One model: one request at a time. A new image or a clear waits for the answer being written, whose
        # updates would otherwise bring back the session they replaced.
        in_turn = {"concurrency_limit": 1, "concurrency_id": "model"}
        # Progress shows on the chat only, not over the status and step lines.
        model_call = {**in_turn, "show_progress_on": [chatbot]}

        def values(view: View, *extra) -> tuple:
            return tuple(gr.skip() if value is KEEP else value for value in (*view.outputs(), *extra))

        # Gradio streams from generator functions only (it inspects the function, not what it returns).
        def send_query(state, text, *controls):
            for view in page.send(state, text, *controls):
                yield values(view, view.draft)

        def ask_agent(state, *inputs):
            for view in page.ask_agent(state, *inputs):
                yield values(view)

        upload.change(lambda path, state: values(page.open(path, state)), [upload, session], outputs, **in_turn)
        for trigger in (clear.click, chatbot.clear):        # the button, and the chat's own trash icon
            trigger(lambda state: values(page.clear(state)), [session], outputs, **in_turn)
        for trigger in (query.submit, send.click):
            trigger(send_query, [session, query, *sampling_inputs], outputs + [query], **model_call)
        ask.click(ask_agent, [session, mode, task, platform, answer_format, *sampling_inputs], outputs, **model_call)

        def show_mode(name: str):
            platforms, formats = mode_choices(name)
            return (gr.Dropdown(choices=list(platforms), value=platforms[0] if platforms else None,
                                visible=bool(platforms)),
                    gr.Dropdown(choices=list(formats), value=formats[0] if formats else None, visible=bool(formats)))

        mode.change(show_mode, [mode], [platform, answer_format])
    return demo


def heading(checkpoint: str, version: str) -> str:
    return f"## {TITLE}\n\nModel: `{Path(checkpoint).name}` · prompt template: `{version}`"


def serve(demo, host: str, port: int, share: bool) -> None:
    """Serve until Ctrl-C. Gradio's own SSR server (Node) is not used: the page is rendered in the browser."""
    demo.queue().launch(server_name=host, server_port=port, share=share, show_error=False, ssr_mode=False,
                        footer_links=[])


def can_serve(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now (checked before the minutes a large model takes to load;
    launching checks again)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)     # as the server will: TIME_WAIT is fine
            probe.bind((host, port))
    except OSError:                 # in use, not an address of this machine, or a name that does not resolve
        return False
    return True


def main(argv=None) -> int:
    args = parse_args(argv)
    console = Console(chinese=False)
    if console.world_size > 1:
        console.error(message("web_one_process"))
        return 1
    if not can_serve(args.host, args.port):
        console.error(message("cannot_serve", host=args.host, port=args.port))
        return 1
    from cogvlm.utils.checkpoint_io.download import checkpoint_not_found

    missing = checkpoint_not_found(args.from_pretrained)       # before the seconds torch and SAT take to import
    if missing is not None:
        console.error(message("checkpoint_error", detail=missing))
        return 1
    from cogvlm.basic_demo.cli_demo_sat import load_chat

    chat = load_chat(args, console)
    if chat is None:
        return 1
    from cogvlm.utils.inference.generation import SamplingConfig

    defaults = SamplingConfig(max_length=args.max_length, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")     # read when gradio is imported
    demo = build_demo(DemoPage(chat, defaults), heading(args.from_pretrained, chat.version))
    try:
        serve(demo, args.host, args.port, args.share)
    except OSError:                 # Gradio's text names its own parameters; say it with the flags
        console.error(message("cannot_serve", host=args.host, port=args.port))
        return 1
    return 0


if __name__ == "__main__":
    warn_if_other_checkout(__file__)
    sys.exit(main())
