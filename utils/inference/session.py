"""A conversation about one image, as an interactive front end holds it between requests (basic_demo/web_demo.py).

    session = open_image(chat, path)                       # load + preprocess once; a new image starts over
    for text in stream_turn(chat, session, query, sampling):   # the answer so far, as it grows
        ...
    session.marked = mark_answer_boxes(session.picture, session.history[-1][1])

Importing this module imports nothing heavy: PIL, torch and the model come with the ChatModel passed in.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Iterator

from cogvlm.utils.grounding.agent_modes import AgentStep
from cogvlm.utils.inference.messages import message

if TYPE_CHECKING:
    from cogvlm.models.inputs import ImageInputs
    from cogvlm.utils.agent.protocol import HistoryStep
    from cogvlm.utils.inference.chat import ChatModel
    from cogvlm.utils.inference.generation import SamplingConfig


class NoImageError(ValueError):
    """A query before any image was given."""


@dataclass
class AgentTask:
    """The GUI-agent task being worked on, for the modes whose query lists the task's earlier steps (CogAgent-9B):
    the mode's name, the task and its steps so far, in order (the query numbers them from 0)."""
    mode: str
    task: str
    steps: list[HistoryStep] = field(default_factory=list)


@dataclass
class Session:
    """picture: the image as loaded (RGB PIL); image: its model inputs, made once when it is opened so that every
    turn reuses them; history: the (query, answer) turns so far; marked: the picture with the last answer's boxes
    drawn, or None; agent: the agent task being worked on, or None. A new screenshot goes on with the same agent
    task (see carry_on)."""
    picture: Any = None
    image: ImageInputs | None = None
    history: list[tuple[str, str]] = field(default_factory=list)
    marked: Any = None
    agent: AgentTask | None = None

    @property
    def shown(self) -> Any:
        """The image to show: with the last answer's boxes when it had some."""
        return self.marked if self.marked is not None else self.picture

    def clear(self) -> None:
        """Start the conversation over about the same image, and forget the agent task."""
        self.history, self.marked, self.agent = [], None, None

    def carry_on(self, previous: Session) -> Session:
        """This session (about a new image) going on with `previous`'s agent task: the next screenshot of a task
        is asked with the steps taken so far."""
        self.agent = None if previous.agent is None else replace(previous.agent, steps=list(previous.agent.steps))
        return self

    def working_on(self, mode: str, task: str) -> bool:
        """Whether `task` in `mode` is the agent task being worked on."""
        return self.agent is not None and (self.agent.mode, self.agent.task) == (mode, task)

    def agent_steps(self, mode: str, task: str) -> list[HistoryStep]:
        """The steps taken so far of `task` in `mode`: none unless it is the task being worked on."""
        return list(self.agent.steps) if self.working_on(mode, task) else []

    def work_on(self, mode: str, task: str) -> None:
        """Make `task` in `mode` the agent task; a task or mode other than the current one starts with no steps."""
        if not self.working_on(mode, task):
            self.agent = AgentTask(mode, task)

    def record_agent_step(self, step: AgentStep) -> None:
        """Add a parsed step to the task's steps (an unread one is not repeated); a step that ends the task ends
        it, so that the same task typed again starts over."""
        if self.agent is None:
            return
        if step.ends_task:
            self.agent = None
        elif step.history_step is not None:
            self.agent.steps.append(step.history_step)


def open_image(chat: ChatModel, source: str) -> Session:
    """A new session about the image at `source` (path or URL); ImageLoadError (one line) if it cannot be read."""
    from cogvlm.utils.preprocessing.image_processor import load_image

    picture = load_image(source)
    return Session(picture, chat.preprocess(picture))


def stream_turn(chat: ChatModel, session: Session, query: str, sampling: SamplingConfig,
                with_history: bool = True) -> Iterator[str]:
    """Yield the answer to `query` so far, each time it grows; when it is complete the turn joins the history.
    Without `with_history` the model is asked `query` alone (a CogAgent-9B query holds the steps it needs).

    Raises NoImageError without an image, and the model's one-line ValueErrors (an empty query, a prompt too long
    for max_length) before anything is yielded. A turn that fails or is not read to its end leaves the history
    as it was."""
    if session.image is None:
        raise NoImageError(message("no_image"))
    answer = ""
    for piece in chat.stream(query, session.history if with_history else [], session.image, sampling):
        answer += piece
        yield answer
    session.history.append((query, answer.strip()))


def mark_answer_boxes(picture: Any, answer: str) -> Any:
    """`picture` with the answer's [[x0,y0,x1,y1]] boxes drawn and labelled with their phrases, or None when the
    answer has no box."""
    from cogvlm.utils.grounding.boxes import ground_phrases, render_boxes

    grounded = ground_phrases(answer)
    return render_boxes(picture, grounded) if grounded else None
