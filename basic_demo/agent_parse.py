"""Parse one CogAgent-9B answer (read from stdin) and print the step as JSON, for scripts in any language.

    python basic_demo/agent_parse.py < answer.txt
    python basic_demo/agent_parse.py --width 1920 --height 1080 < answer.txt     # box and point in pixels

Output, one JSON object: "operation" (the name, or null when no operation could be read), "reason" (why not, or
null), "arguments" (by name; a box as four integers in thousandths, numbers as numbers, GESTURE's actions as
objects), "sensitive" (true for <<敏感操作>>, false for <<一般操作>> / <<END>>, null without a tag), "sensitivity",
"status", "plan", "action", "grounded_operation" (as written), and with --width/--height "box_pixels" and
"point" (the box centre, where the operation acts) in pixels of that screenshot, else null.

Input and output are UTF-8. Exit status: 0 when an operation was read, 3 when the answer is unparsed (the JSON
says why), 2 for bad flags.
"""
from __future__ import annotations

import argparse
import json
import sys

from cogvlm import warn_if_other_checkout
from cogvlm.utils.agent.answer import AgentStep, answer_to_json, parse_answer

EXIT_UNPARSED = 3


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=_positive, help="screenshot width in pixels (with --height)")
    parser.add_argument("--height", type=_positive, help="screenshot height in pixels (with --width)")
    args = parser.parse_args(argv)
    if (args.width is None) != (args.height is None):
        parser.error("--width and --height go together")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    # UTF-8 both ways whatever the locale: the tags are Chinese, and JSON is UTF-8 (RFC 8259).
    answer = parse_answer(sys.stdin.buffer.read().decode("utf-8", errors="replace"))
    document = json.dumps(answer_to_json(answer, args.width, args.height), ensure_ascii=False)
    sys.stdout.buffer.write(document.encode("utf-8") + b"\n")
    sys.stdout.flush()
    return 0 if isinstance(answer, AgentStep) else EXIT_UNPARSED


if __name__ == "__main__":
    warn_if_other_checkout(__file__)
    sys.exit(main())
