"""Time to first token, decode speed and peak memory of KV-cached greedy generation on one checkpoint.

    python benchmarks/bench_generation.py --checkpoint checkpoints/captcha-tiny     # the embedded tiny model
    python benchmarks/bench_generation.py --checkpoint MID_COGVLM_DIR --prompt_tokens 325 --new_tokens 64

The prompt is built by the processor: the chat template with an image (random pixels) and a query long enough
for --prompt_tokens, tokenized with the checkpoint's tokenizer.model, or the embedded tiny one (whose ids are valid
in any larger vocabulary) when the checkpoint has none. Generation runs to --new_tokens with no stop token. Prints
a table; every timing is the median of --repeats runs.
"""
import argparse
import resource
import statistics
import time
from pathlib import Path

import torch

from cogvlm import PACKAGE_ROOT
from cogvlm.models.inputs import ImageInputs, ModelInputs, truncated
from cogvlm.utils.checkpoint_io.loading import load_model
from cogvlm.utils.inference.generation import SamplingConfig, generate
from cogvlm.utils.preprocessing.processor import Processor
from cogvlm.utils.preprocessing.tokenizer import TOKENIZER_FILENAME, LlamaTokenizer

EMBEDDED = PACKAGE_ROOT / "checkpoints" / "captcha-tiny"
FILLER = "Describe the button in the top left corner of this image and click it. "


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def read_bandwidth_gbs(gib: float = 1.0, repeats: int = 5) -> float:
    """Best-of-N memory read bandwidth: summing a buffer larger than any cache."""
    buffer = torch.ones(int(gib * 2**30) // 4)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - start)
    return buffer.numel() * 4 / best / 1e9


def decode_bytes(model, batch_size: int = 1, context: int = 0) -> int:
    """Bytes one decode step of `batch_size` rows must read: the decoder's language weights and the LM head (a
    generated token never touches the image encoders, the adapter or the visual experts, and reads one embedding
    row), as stored (quantised weights: their integers and scales), and per row the cached keys/values of
    `context` positions and, for CogAgent, the cross keys/values of every layer (projected once, at prefill: the
    cross key_value weights are not read again)."""
    from cogvlm.utils.quantization.weight_only import QuantizedWeight

    def read_per_token(name: str) -> bool:
        return (not name.startswith(("mixins.image.", "mixins.cross_vision.")) and "vision_" not in name
                and "word_embeddings" not in name and "cross_attention.key_value" not in name)

    weights = sum(p.nbytes for name, p in model.named_parameters() if read_per_token(name))
    weights += sum(m.weight.packed.nbytes + m.weight.scales.nbytes for name, m in model.named_modules()
                   if isinstance(getattr(m, "weight", None), QuantizedWeight) and read_per_token(name))
    probe = model.new_kv_cache(batch_size=1, max_length=1)                   # one position of one row
    per_row = context * (probe.keys.nbytes + probe.values.nbytes)
    if model.config.cross_image_size is not None:
        layer = model.transformer.layers[0].cross_attention
        per_row += (len(model.transformer.layers) * 2 * layer.inner_hidden_size
                    * model.config.cross_vision.num_patches * model.dtype.itemsize)
    return weights + batch_size * per_row


def tokenizer_for(checkpoint: Path) -> LlamaTokenizer:
    return LlamaTokenizer.from_path(checkpoint if (checkpoint / TOKENIZER_FILENAME).is_file() else EMBEDDED)


def make_prompt(config, tokenizer: LlamaTokenizer, prompt_tokens: int) -> ModelInputs:
    shortest = config.image_length + 3                           # bos, the image slot (boi, patches, eoi), a token
    if prompt_tokens < shortest:
        raise SystemExit(f"Error: --prompt_tokens must be at least {shortest} (the image alone takes "
                         f"{config.image_length + 2})")
    processor = Processor.for_model(config, tokenizer, "chat")
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(1, 3, config.vision.image_size, config.vision.image_size, generator=generator)
    cross = config.cross_image_size                              # CogAgent: the high-resolution copy too
    cross_pixels = torch.randn(1, 3, cross, cross, generator=generator) if cross else None
    image = ImageInputs(pixels, cross_pixels)
    query = FILLER
    while len(processor(query, (), image)) < prompt_tokens:
        query += FILLER
    return truncated(processor(query, (), image), prompt_tokens)    # the query's tail trimmed to the exact length


def run_once(model, prompt: ModelInputs, new_tokens: int) -> tuple[float, float]:
    sampling = SamplingConfig(max_length=len(prompt) + new_tokens)
    start = time.perf_counter()
    stream = generate(model, prompt, sampling, stop_token_ids=())
    next(stream)
    first = time.perf_counter()
    count = 1 + sum(1 for _ in stream)
    end = time.perf_counter()
    assert count == new_tokens, count
    return first - start, (count - 1) / (end - first)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(EMBEDDED))
    parser.add_argument("--prompt_tokens", type=int, default=96, help="image slot included")
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--probe_gib", type=float, default=1.0, help="buffer size of the bandwidth probe")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    model, config = load_model(args.checkpoint)
    load_seconds, load_rss = time.perf_counter() - start, peak_rss_gib()
    prompt = make_prompt(config, tokenizer_for(Path(args.checkpoint)), args.prompt_tokens)
    run_once(model, prompt, args.new_tokens)                     # warm-up
    runs = [run_once(model, prompt, args.new_tokens) for _ in range(args.repeats)]
    generation_rss = peak_rss_gib()
    bandwidth = read_bandwidth_gbs(args.probe_gib)
    floor_ms = decode_bytes(model, context=len(prompt) + args.new_tokens // 2) / bandwidth / 1e6
    ttft = statistics.median(r[0] for r in runs)
    speed = statistics.median(r[1] for r in runs)
    params = sum(p.numel() for p in model.parameters())

    print(f"| checkpoint | {Path(args.checkpoint).name} ({params / 1e6:.1f} M parameters, fp32) |")
    print("| --- | --- |")
    print(f"| threads / prompt / new tokens | {args.threads} / {len(prompt)} (image {config.image_length + 2}) "
          f"/ {args.new_tokens} |")
    print(f"| load (s) | {load_seconds:.2f} |")
    print(f"| time to first token = prefill + 1 sample (s, median of {args.repeats}) | {ttft:.3f} |")
    print(f"| decode tokens/s (median of {args.repeats}) | {speed:.1f} |")
    print(f"| read bandwidth now (GB/s) / decode floor (ms per token) | {bandwidth:.1f} / {floor_ms:.1f} |")
    print(f"| decode step / floor | {1000 / speed / floor_ms:.2f}x |")
    print(f"| peak RSS after load / after generating (GiB) | {load_rss:.2f} / {generation_rss:.2f} |")


if __name__ == "__main__":
    main()
