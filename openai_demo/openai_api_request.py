"""Ask the OpenAI-compatible server about an image with the official `openai` client.

    python openai_demo/openai_api.py &                                    # the server (embedded captcha reader)
    python openai_demo/openai_api_request.py --image checkpoints/captcha-tiny/examples/3640.png \
        --query "What text is written in the image?" [--stream]

The image goes inline as a base64 data: URL (an http(s) URL is sent as it is: the server fetches it only when
started with --allow_image_urls). Grounding answers also print their boxes (the server's `boxes` extension).
"""
from __future__ import annotations

import argparse
import base64
import mimetypes
import sys


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
    args = parser.parse_args(argv)

    import openai

    client = openai.OpenAI(base_url=args.base_url, api_key="unused")     # the server checks no key
    try:
        url = image_url(args.image)
    except OSError as problem:
        print(f"Error: cannot read {args.image}: {problem.strerror}", file=sys.stderr)
        return 1
    messages = [{"role": "user", "content": [{"type": "text", "text": args.query},
                                             {"type": "image_url", "image_url": {"url": url}}]}]
    try:
        if args.stream:
            for chunk in client.chat.completions.create(model="cogvlm", messages=messages, stream=True,
                                                        max_tokens=args.max_tokens):
                if chunk.choices and chunk.choices[0].delta.content:
                    print(chunk.choices[0].delta.content, end="", flush=True)
            print()
            return 0
        response = client.chat.completions.create(model="cogvlm", messages=messages, max_tokens=args.max_tokens)
    except openai.APIStatusError as problem:      # the server's 4xx / 5xx: its one-line message
        detail = problem.body.get("message") if isinstance(problem.body, dict) else problem.message
        print(f"Error: {problem.status_code}: {detail}", file=sys.stderr)
        return 1
    except openai.APIConnectionError:
        print(f"Error: no server answers at {args.base_url}", file=sys.stderr)
        return 1
    message = response.choices[0].message
    print(message.content)
    boxes = (message.model_extra or {}).get("boxes")
    if boxes:
        print(f"boxes: {boxes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
