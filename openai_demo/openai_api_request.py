"""Ask the OpenAI-compatible server about an image with the official `openai` client.

    python openai_demo/openai_api.py &                                    # the server (embedded captcha reader)
    python openai_demo/openai_api_request.py --image checkpoints/captcha-tiny/examples/3640.png \
        --query "What text is written in the image?" [--stream]

    python openai_demo/openai_api_request.py --image screenshot.png --agent_task "Mark all emails as read" \
        --platform WIN [--format_key action_op_sensitive] [--history answer0.txt ...]       # a CogAgent-9B step

The image goes inline as a base64 data: URL (an http(s) URL is sent as it is: the server fetches it only when
started with --allow_image_urls). Grounding answers also print their boxes (the server's `boxes` extension).

With --agent_task the request uses the server's agent extension (openai_demo/agent.py): the image is the
screenshot, the server builds CogAgent-9B's query from the task, the history (the model's earlier answers, one
file each, oldest first), the platform and the format, and the answer is followed by its parsed step as one line
of JSON ("agent_step: {...}": the operation, its arguments, and box_pixels / point in pixels of the screenshot).
"""
from __future__ import annotations

import argparse
import base64
import json
import mimetypes
import sys
from pathlib import Path

from cogvlm.utils.agent.protocol import DEFAULT_FORMAT, AnswerFormat, Platform


def image_url(image: str) -> str:
    if image.startswith(("http://", "https://", "data:")):
        return image
    kind = mimetypes.guess_type(image)[0] or "image/png"
    with open(image, "rb") as file:
        return f"data:{kind};base64,{base64.b64encode(file.read()).decode()}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base_url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--image", required=True, help="image file, or an http(s) / data: URL")
    parser.add_argument("--query", default="Describe this image.")
    parser.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    parser.add_argument("--max_tokens", type=int, default=None)
    agent = parser.add_argument_group("agent (CogAgent-9B: the image is a screenshot)")
    agent.add_argument("--agent_task", default=None, help="ask for the next step of this GUI task instead of --query")
    agent.add_argument("--platform", default=Platform.MAC.value, choices=[p.value for p in Platform],
                       help="the screenshot's system (default %(default)s, as the agent CLI)")
    agent.add_argument("--format_key", "--format", dest="format_key", default=DEFAULT_FORMAT.value,
                       choices=[f.value for f in AnswerFormat], help="the answer format (default %(default)s)")
    agent.add_argument("--history", nargs="*", default=[], metavar="ANSWER_FILE",
                       help="the model's earlier answers for this task, one text file each, oldest first")
    agent.add_argument("--continue", dest="continue_task", action="store_true",
                       help="ask the model to continue the task's answer ([Continue])")
    args = parser.parse_args(argv)

    import openai

    client = openai.OpenAI(base_url=args.base_url, api_key="unused")     # the server checks no key
    try:
        url = image_url(args.image)
        extra_body = None if args.agent_task is None else {"agent": agent_fields(args)}
    except OSError as problem:
        print(f"Error: cannot read {problem.filename}: {problem.strerror}", file=sys.stderr)
        return 1
    # With the agent extension the user message holds only the screenshot: the server builds the query.
    question = [] if extra_body else [{"type": "text", "text": args.query}]
    messages = [{"role": "user", "content": [*question, {"type": "image_url", "image_url": {"url": url}}]}]
    try:
        if args.stream:
            last_delta = None
            for chunk in client.chat.completions.create(model="cogvlm", messages=messages, stream=True,
                                                        max_tokens=args.max_tokens, extra_body=extra_body):
                if chunk.choices:
                    last_delta = chunk.choices[0].delta
                    print(last_delta.content or "", end="", flush=True)
            print()
            print_extensions(last_delta)
            return 0
        response = client.chat.completions.create(model="cogvlm", messages=messages, max_tokens=args.max_tokens,
                                                  extra_body=extra_body)
    except openai.APIStatusError as problem:      # the server's 4xx / 5xx: its one-line message
        detail = problem.body.get("message") if isinstance(problem.body, dict) else problem.message
        print(f"Error: {problem.status_code}: {detail}", file=sys.stderr)
        return 1
    except openai.APIConnectionError:
        print(f"Error: no server answers at {args.base_url}", file=sys.stderr)
        return 1
    message = response.choices[0].message
    print(message.content)
    print_extensions(message)
    return 0


def agent_fields(args: argparse.Namespace) -> dict:
    """The request's `agent` object (OSError when a history file cannot be read)."""
    history = [Path(name).read_text(encoding="utf-8") for name in args.history]
    return {"task": args.agent_task, "history": history, "platform": args.platform, "format": args.format_key,
            "continue": args.continue_task}


def print_extensions(message) -> None:
    """The server's extension fields of an answer (a message, or a stream's last delta): boxes, agent_step."""
    extra = (message.model_extra or {}) if message is not None else {}
    if extra.get("boxes"):
        print(f"boxes: {extra['boxes']}")
    if "agent_step" in extra:
        print(f"agent_step: {json.dumps(extra['agent_step'], ensure_ascii=False)}")


if __name__ == "__main__":
    sys.exit(main())
