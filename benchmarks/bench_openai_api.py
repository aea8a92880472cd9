"""Load test of the OpenAI-compatible server: requests/s and latency at 1, 4 and 16 concurrent clients.

    python benchmarks/bench_openai_api.py                                   # the embedded captcha reader
    python benchmarks/bench_openai_api.py --requests 8 --concurrency 1 2    # a quick look
    python benchmarks/bench_openai_api.py --from_pretrained CKPT --local_tokenizer PATH --max_tokens 64

Starts openai_demo/openai_api.py on 127.0.0.1 (a free port) with --num_slots as large as the largest concurrency,
warms it up with one request, then, for each concurrency level C, runs C client threads (the official `openai`
client, plain answers) until --requests requests are done or --max_seconds have passed (what was started finishes).
Each request asks about the example images in turn; every answer must equal the same image's answer at C = 1
(continuous batching must not change what the model says). Prints a Markdown table: requests done, requests/s,
p50 / p95 latency (s), generated tokens/s, mismatched answers. The machine's load moves these numbers: compare rows
of one run.
"""
from __future__ import annotations

import argparse
import base64
import math
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = REPO_ROOT / "checkpoints" / "captcha-tiny"
IMAGES = sorted((CHECKPOINT / "examples").glob("*.png"))
QUERY = "What text is written in the image?"


@dataclass(frozen=True)
class Result:
    image: Path
    answer: str
    seconds: float
    completion_tokens: int


def messages(image: Path) -> list[dict]:
    url = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
    return [{"role": "user", "content": [{"type": "text", "text": QUERY},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


def ask(client, image: Path, max_tokens: int | None) -> Result:
    extra = {"ignore_eos": True} if max_tokens else {}
    start = time.perf_counter()
    response = client.chat.completions.create(model="bench", messages=messages(image), max_tokens=max_tokens,
                                              extra_body=extra)
    return Result(image, response.choices[0].message.content, time.perf_counter() - start,
                  response.usage.completion_tokens)


def run_level(client, concurrency: int, requests: int, max_seconds: float, max_tokens: int | None
              ) -> tuple[list[Result], float]:
    """-> the results of `concurrency` clients sending requests until `requests` are taken or time is up, and the
    wall time."""
    taken, lock = [0], threading.Lock()
    deadline = time.perf_counter() + max_seconds

    def next_index() -> int | None:
        with lock:
            if taken[0] >= requests or time.perf_counter() > deadline:
                return None
            taken[0] += 1
            return taken[0] - 1

    def client_loop() -> list[Result]:
        done = []
        while (index := next_index()) is not None:
            done.append(ask(client, images_for(index), max_tokens))
        return done

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = [result for done in pool.map(lambda _: client_loop(), range(concurrency)) for result in done]
    return results, time.perf_counter() - start


def images_for(index: int) -> Path:
    return IMAGES[index % len(IMAGES)]


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile: the smallest value with at least `fraction` of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(math.ceil(round(fraction * len(ordered), 9)), 1) - 1]     # round: 0.95 * 20 is 19.000...04


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from_pretrained", default=str(CHECKPOINT))
    parser.add_argument("--local_tokenizer", default=None)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16], help="concurrent clients per row")
    parser.add_argument("--requests", type=int, default=64, help="requests per row (at most)")
    parser.add_argument("--max_seconds", type=float, default=60.0, help="time per row (at most; started ones finish)")
    parser.add_argument("--max_tokens", type=int, default=None,
                        help="generate exactly this many tokens per answer (default: until the model stops)")
    args = parser.parse_args(argv)
    if args.requests < 1 or min(args.concurrency) < 1 or args.max_seconds <= 0:
        parser.error("--requests and --concurrency must be at least 1, --max_seconds positive")

    import openai
    from cogvlm.openai_demo.local_server import running_server

    server_args = ["--from_pretrained", args.from_pretrained, "--num_slots", str(max(args.concurrency)),
                   "--max_queue", str(max(args.concurrency))]
    if args.local_tokenizer:
        server_args += ["--local_tokenizer", args.local_tokenizer]
    with running_server(*server_args) as base_url:
        client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=600)
        expected = {image: ask(client, image, args.max_tokens).answer for image in IMAGES}     # also the warm-up
        print("| concurrent clients | requests | requests/s | p50 latency (s) | p95 latency (s) | tokens/s | "
              "answers unlike C=1 |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for concurrency in args.concurrency:
            results, wall = run_level(client, concurrency, args.requests, args.max_seconds, args.max_tokens)
            latencies = [result.seconds for result in results]
            tokens = sum(result.completion_tokens for result in results)
            mismatches = sum(result.answer != expected[result.image] for result in results)
            print(f"| {concurrency} | {len(results)} | {len(results) / wall:.2f} | "
                  f"{statistics.median(latencies):.3f} | {percentile(latencies, 0.95):.3f} | {tokens / wall:.1f} | "
                  f"{mismatches} |", flush=True)


if __name__ == "__main__":
    main()
