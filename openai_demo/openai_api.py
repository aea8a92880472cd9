"""An OpenAI-compatible chat-completions server for CogVLM / CogAgent (FastAPI + uvicorn).

    python openai_demo/openai_api.py                                     # the embedded captcha reader
    python openai_demo/openai_api.py --from_pretrained cogvlm-chat-v1.1 --local_tokenizer PATH --bf16 \\
        --host 127.0.0.1 --port 8000
    torchrun --nproc-per-node=2 openai_demo/openai_api.py ...            # split across 2 processes (model parallel)

Routes: POST /v1/chat/completions (text and image_url parts, stream, max_tokens, temperature, top_p, stop, seed;
usage counts; grounding boxes in choices[0].message.boxes; with a top-level `agent` object, CogAgent-9B's
GUI-agent query built by the server and the parsed step in choices[0].message.agent_step: see agent.py),
GET /v1/models, GET /health (slots in use, queue).
Requests from all clients are answered together by continuous batching in --num_slots rows; up to --max_queue more
wait; beyond that a request gets 429 with Retry-After. Bad input gets a 4xx with OpenAI's error JSON.
Under torchrun, rank 0 serves HTTP and every rank steps the same batches.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cogvlm import warn_if_other_checkout
from cogvlm.basic_demo.cli_demo_sat import add_model_arguments, check_common_arguments
from cogvlm.utils.inference.messages import message

MEGABYTE = 1024 * 1024


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model_name", default=None,
                        help="the model id /v1/models lists (default: the checkpoint's folder name)")
    parser.add_argument("--max_length", type=int, default=2048, help="max tokens of prompt + answer per request")
    parser.add_argument("--num_slots", type=int, default=8, help="requests generated together (KV-cache rows)")
    parser.add_argument("--max_queue", type=int, default=64,
                        help="requests that may wait for a slot; more get 429 Retry-After")
    parser.add_argument("--max_image_mb", type=float, default=20.0, help="largest image file accepted (MB)")
    parser.add_argument("--allow_image_urls", action="store_true",
                        help="also fetch http(s) image URLs (default: base64 data: URLs only)")
    parser.add_argument("--allow_private_image_urls", action="store_true",
                        help="with --allow_image_urls, also fetch from loopback, private and link-local addresses")
    parser.add_argument("--image_url_deadline", type=float, default=20.0,
                        help="seconds a whole image download may take")
    parser.add_argument("--allow_text_only", action="store_true",
                        help="answer questions without an image (by default an image is required, as in the CLI)")
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    if args.num_slots < 1 or args.max_queue < 1:
        parser.error("--num_slots and --max_queue must be at least 1")
    if args.max_image_mb <= 0 or args.image_url_deadline <= 0:
        parser.error("--max_image_mb and --image_url_deadline must be positive")
    return args


def serve(args: argparse.Namespace, chat, console) -> None:
    """Rank 0: the HTTP server and the engine loop; other ranks: follow rank 0's batches."""
    from cogvlm.openai_demo.engine_loop import EngineLoop, follow

    if console.rank != 0:
        follow(chat, args.num_slots, args.max_length, args.num_slots + args.max_queue)
        return
    import uvicorn
    from cogvlm.openai_demo.app import ServerOptions, create_app
    from cogvlm.openai_demo.images import ImagePolicy

    options = ServerOptions(
        model_name=args.model_name or Path(args.from_pretrained).name, max_length=args.max_length,
        images=ImagePolicy(max_bytes=int(args.max_image_mb * MEGABYTE), allow_urls=args.allow_image_urls,
                           allow_private_urls=args.allow_private_image_urls,
                           deadline_seconds=args.image_url_deadline),
        allow_text_only=args.allow_text_only)
    engine = EngineLoop(chat, args.num_slots, args.max_length, args.max_queue)
    engine.start()
    try:
        uvicorn.run(create_app(engine, options), host=args.host, port=args.port, log_level="info")
    finally:
        engine.stop()


def run(args: argparse.Namespace) -> int:
    from cogvlm.basic_demo.cli_demo_sat import Console, load_chat
    from cogvlm.utils.checkpoint_io.download import checkpoint_not_found

    console = Console(chinese=False)
    missing = checkpoint_not_found(args.from_pretrained)       # before the seconds torch and SAT take to import
    if missing is not None:
        console.error(message("checkpoint_error", detail=missing))
        return console.startup_failure_status()
    chat = load_chat(args, console)
    if chat is None:
        return console.startup_failure_status()
    console.note(message("version", version=chat.version))
    serve(args, chat, console)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:           # Ctrl-C while loading (uvicorn handles it once serving)
        from cogvlm.basic_demo.cli_demo_sat import EXIT_INTERRUPTED

        return EXIT_INTERRUPTED


if __name__ == "__main__":
    warn_if_other_checkout(__file__)
    sys.exit(main())
