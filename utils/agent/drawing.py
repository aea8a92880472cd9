"""Draw a parsed agent step on its screenshot: the box and the point the operation acts at."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..grounding.boxes import BOX_COLORS, GroundedPhrase, render_boxes, line_width_for
from .answer import AgentStep

BOX_COLOR = BOX_COLORS[0]       # render_boxes gives the first phrase the first colour
POINT_COLOR = BOX_COLORS[4]     # blue on the orange box: the point stays visible on the outline
# The point's disc radius, in outline widths.
POINT_RADIUS_LINES = 2


def draw_step(image: Any, step: AgentStep, path: str | Path) -> Path:
    """Save a PNG copy of the screenshot with the step's box (labelled with the operation) and its action point
    (a filled disc at the box centre, as the executors act); a step without a box is saved unmarked."""
    from PIL import ImageDraw  # lazy: only drawing needs PIL

    grounded = [GroundedPhrase(step.operation.name, [step.box])] if step.box is not None else []
    canvas = render_boxes(image, grounded)
    point = step.action_point(*canvas.size)
    if point is not None:
        x, y = point
        radius = POINT_RADIUS_LINES * line_width_for(*canvas.size)
        ImageDraw.Draw(canvas).ellipse((x - radius, y - radius, x + radius, y + radius), fill=POINT_COLOR)
    path = Path(path)
    canvas.save(path, format="PNG")
    return path
