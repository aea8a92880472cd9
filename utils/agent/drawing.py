"""Draw a parsed agent step on its screenshot: the box and the point the operation acts at."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..grounding.boxes import BOX_COLORS, Box, GroundedPhrase, render_boxes, line_width_for
from .answer import AgentStep, box_action_point

BOX_COLOR = BOX_COLORS[0]       # render_boxes gives the first phrase the first colour
POINT_COLOR = BOX_COLORS[4]     # blue on the orange box: the point stays visible on the outline
# The point's disc radius, in outline widths.
POINT_RADIUS_LINES = 2


def render_target(image: Any, box: Box | None, label: str) -> Any:
    """A copy of the screenshot (RGB) with `box` outlined and labelled with `label`, and its action point (a
    filled disc at the box centre, as the executors act); an unmarked copy without a box. The agent CLI saves
    it (draw_step) and the web demo shows it."""
    from PIL import ImageDraw  # lazy: only drawing needs PIL

    canvas = render_boxes(image, [GroundedPhrase(label, [box])] if box is not None else [])
    if box is not None:
        x, y = box_action_point(box, *canvas.size)
        radius = POINT_RADIUS_LINES * line_width_for(*canvas.size)
        ImageDraw.Draw(canvas).ellipse((x - radius, y - radius, x + radius, y + radius), fill=POINT_COLOR)
    return canvas


def draw_step(image: Any, step: AgentStep, path: str | Path) -> Path:
    """Save a PNG copy of the screenshot with the step's box, labelled with the operation's name, and its action
    point (see render_target); a step without a box is saved unmarked."""
    path = Path(path)
    render_target(image, step.box, step.operation.name).save(path, format="PNG")
    return path
