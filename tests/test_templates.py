"""Tests for cogvlm.utils.grounding.templates: the published grounding / agent prompts, filled exactly as the published demos do."""
import pytest

from cogvlm.utils.grounding.boxes import Box, parse_boxes
from cogvlm.utils.grounding.templates import (
    GROUNDING_TEMPLATES,
    TemplateError,
    agent_query,
    box2caption_query,
    caption2box_query,
    caption_with_box_query,
)


def test_grounding_templates_are_read_only():
    with pytest.raises(TypeError):
        GROUNDING_TEMPLATES["caption2box"] = "changed"  # data, not configuration


def test_grounding_queries():
    assert caption_with_box_query() == ("Can you provide a description of the image and include the coordinates "
                                        "[[x0,y0,x1,y1]] for each mentioned object?")
    assert caption2box_query(" children in blue T-shirts ") == (
        "Where is children in blue T-shirts? answer in [[x0,y0,x1,y1]] format."
    )
    # The README's box2caption example, zero padding included.
    assert box2caption_query(Box(86, 540, 400, 760)) == (
        "Tell me what you see within the designated area [[086,540,400,760]] in the picture."
    )
    assert box2caption_query(Box(1, 2, 3, 4), template="Describe <objs>.") == "Describe [[001,002,003,004]]."


def test_format_placeholders_are_not_boxes():
    # "[[x0,y0,x1,y1]]" in a query must never be read back as a box.
    assert parse_boxes(caption_with_box_query()) == []
    assert parse_boxes(caption2box_query("the dog")) == []


def test_agent_query_matches_the_readme():
    assert agent_query("Search for CogVLM") == 'What steps do I need to take to "Search for CogVLM"?'
    assert agent_query("Search for CogVLM", with_grounding=True) == (
        'What steps do I need to take to "Search for CogVLM"?(with grounding)'
    )


def test_agent_query_other_published_template():
    template = "What's the proper procedure for <TASK>?"
    assert agent_query(" Book a room ", with_grounding=True, template=template) == (
        'What\'s the proper procedure for "Book a room"?(with grounding)'
    )


@pytest.mark.parametrize("call", [
    lambda: agent_query(""),
    lambda: agent_query("   \n"),
    lambda: caption2box_query(""),
    lambda: agent_query("task", template="No placeholder here."),
    lambda: caption2box_query("dog", template="Where is it?"),
    lambda: box2caption_query(Box(1, 2, 3, 4), template="Describe it."),
])
def test_template_errors(call):
    with pytest.raises(TemplateError):
        call()


def test_empty_task_message():
    with pytest.raises(ValueError, match="task is empty"):
        agent_query(" ")
