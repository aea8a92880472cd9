"""A conversation about one image, as an interactive front end holds it between requests (basic_demo/web_demo.py).

    session = open_image(chat, path)                       # load + preprocess once; a new image starts over
    for text in stream_turn(chat, session, query, sampling):   # the answer so far, as it grows
        ...
    session.marked = mark_answer_boxes(session.picture, session.history[-1][1])

Importing this module imports nothing heavy: PIL, torch and the model come with the ChatModel passed in.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

from cogvlm.utils.grounding.agent_modes import AgentStep
from cogvlm.utils.inference.messages import message

if TYPE_CHECKING:
    from cogvlm.models.inputs import ImageInputs
    from cogvlm.utils.inference.chat import ChatModel
    from cogvlm.utils.inference.generation import SamplingConfig


class NoImageError(ValueError):
    """A query before any image was given."""


@dataclass
class Session:
    """picture: the image as loaded (RGB PIL); image: its model inputs, made once when it is opened so that every
    turn reuses them; history: the (query, answer) turns so far; marked: the picture with the last answer's boxes
    drawn, or None."""
    picture: Any = None
    image: ImageInputs | None = None
    history: list[tuple[str, str]] = field(default_factory=list)
    marked: Any = None

    @property
    def shown(self) -> Any:
        """The image to show: with the last answer's boxes when it had some."""
        return self.marked if self.marked is not None else self.picture

    def clear(self) -> None:
        """Start the conversation over about the same image."""
        self.history, self.marked = [], None


def open_image(chat: ChatModel, source: str) -> Session:
    """A new session about the image at `source` (path or URL); ImageLoadError (one line) if it cannot be read."""
    from cogvlm.utils.preprocessing.image_processor import load_image

    picture = load_image(source)
    return Session(picture, chat.preprocess(picture))


def stream_turn(chat: ChatModel, session: Session, query: str, sampling: SamplingConfig) -> Iterator[str]:
    """Yield the answer to `query` so far, each time it grows; when it is complete the turn joins the history.

    Raises NoImageError without an image, and the model's one-line ValueErrors (an empty query, a prompt too long
    for max_length) before anything is yielded. A turn that fails or is not read to its end leaves the history
    as it was."""
    if session.image is None:
        raise NoImageError(message("no_image"))
    answer = ""
    for piece in chat.stream(query, session.history, session.image, sampling):
        answer += piece
        yield answer
    session.history.append((query, answer.strip()))


def mark_answer_boxes(picture: Any, answer: str) -> Any:
    """`picture` with the answer's [[x0,y0,x1,y1]] boxes drawn and labelled with their phrases, or None when the
    answer has no box."""
    from cogvlm.utils.grounding.boxes import ground_phrases, render_boxes

    grounded = ground_phrases(answer)
    return render_boxes(picture, grounded) if grounded else None


def mark_agent_step(picture: Any, step: AgentStep) -> Any:
    """`picture` with the agent step's target box (or tap point) drawn, labelled with its operation; None when
    the step has no target."""
    from cogvlm.utils.grounding.boxes import GroundedPhrase, render_boxes

    if step.target is None:
        return None
    return render_boxes(picture, [GroundedPhrase(step.operation or "", [step.target])])
