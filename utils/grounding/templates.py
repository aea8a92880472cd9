"""Task prompts of the published CogVLM grounding and CogAgent-18B agent modes, as data.

Source: THUDM/CogVLM, ``utils/utils/template.py`` (the lists the models were trained with) and the README's
"Task Prompts" cookbook, which picks one template per mode:

- grounding templates live in ``shikra_template`` ('caption2box' with the placeholder ``<expr>``, 'box2caption'
  with ``<objs>``) and a 'caption_with_box' list (no placeholder); the README's caption2box example uses another
  entry of the list than the one below ("Can you point out <expr> in the image and provide the bounding boxes of
  its location?", with "its" changed to "their").
- agent templates are ``en_template_task`` (108 entries, also copied to ``composite_demo/utils.py``), placeholder
  ``<TASK>``; the README example is "What steps do I need to take to <TASK>?". The task is inserted inside
  double quotes, and "(with grounding)" is appended with no space (README; ``composite_demo/client.py``), which
  makes CogAgent add a "Grounded Operation:" line with a box to its answer.

Only the templates the README uses are stored here; any other entry of the published lists can be passed as
`template=` to the helpers.
"""
from __future__ import annotations

from types import MappingProxyType

from .boxes import Box

EXPRESSION_PLACEHOLDER = "<expr>"
BOX_PLACEHOLDER = "<objs>"
TASK_PLACEHOLDER = "<TASK>"
GROUNDING_SUFFIX = "(with grounding)"

GROUNDING_TEMPLATES = MappingProxyType({
    # Describe the image, with a box after each mentioned object (no placeholder).
    "caption_with_box": "Can you provide a description of the image and include the coordinates [[x0,y0,x1,y1]] "
                        "for each mentioned object?",
    # Referring expression -> box(es).
    "caption2box": f"Where is {EXPRESSION_PLACEHOLDER}? answer in [[x0,y0,x1,y1]] format.",
    # Box -> description of the region.
    "box2caption": f"Tell me what you see within the designated area {BOX_PLACEHOLDER} in the picture.",
})

AGENT_TASK_TEMPLATE = f"What steps do I need to take to {TASK_PLACEHOLDER}?"


class TemplateError(ValueError):
    """An empty task / expression, or a template without the placeholder it needs."""


def _fill(template: str, placeholder: str, value: str) -> str:
    if placeholder not in template:
        raise TemplateError(f"template {template!r} has no {placeholder} placeholder")
    return template.replace(placeholder, value)


def _non_empty(value: str, what: str) -> str:
    value = value.strip()
    if not value:
        raise TemplateError(f"the {what} is empty")
    return value


def caption_with_box_query() -> str:
    """Ask for a description of the image with a box after each mentioned object."""
    return GROUNDING_TEMPLATES["caption_with_box"]


def caption2box_query(expression: str, template: str = GROUNDING_TEMPLATES["caption2box"]) -> str:
    """Ask for the box(es) of the object described by `expression`."""
    return _fill(template, EXPRESSION_PLACEHOLDER, _non_empty(expression, "referring expression"))


def box2caption_query(box: Box, template: str = GROUNDING_TEMPLATES["box2caption"]) -> str:
    """Ask what is inside `box` (written ``[[x0,y0,x1,y1]]``, zero-padded)."""
    return _fill(template, BOX_PLACEHOLDER, str(box))


def agent_query(task: str, with_grounding: bool = False, template: str = AGENT_TASK_TEMPLATE) -> str:
    """The CogAgent-18B GUI-agent query: ``What steps do I need to take to "<task>"?`` (+ "(with grounding)").

    With grounding the answer ends with a "Grounded Operation:" naming the element, the operation and its box;
    parse it with cogvlm.utils.grounding.agent_answer.parse_agent_answer.
    """
    query = _fill(template, TASK_PLACEHOLDER, f'"{_non_empty(task, "task")}"')
    return query + GROUNDING_SUFFIX if with_grounding else query
