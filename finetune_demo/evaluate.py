"""Exact-match accuracy of a (fine-tuned) CogVLM / CogAgent checkpoint on captcha-style folders, as a table.

    python finetune_demo/evaluate.py --from_pretrained CKPT --data archive_split/test [archive_split/valid ...]
        [--local_tokenizer PATH] [--query "What text is written in the image?"] [--max_new_tokens 16] [--bf16]
        [--batch_size N] [--quant 8|4] [--fp16] [--compile] [--prefill_dtype auto|fp32|model]

Greedy decoding (the published evaluation's setting), N images at a time (continuous batching: a finished row's
slot takes the next image at once); the answers do not depend on N. Unreadable images are skipped, counted and
reported.
Used by evaluate_cogvlm.sh and evaluate_cogagent.sh.
"""
import argparse
import sys
from pathlib import Path

from cogvlm import warn_if_other_checkout
from cogvlm.utils.inference.options import add_decoding_arguments
from cogvlm.utils.quantization.options import add_quant_arguments


def evaluate(chat, folder, samples, max_new_tokens: int, batch_size: int = 1):
    """(AccuracyRow, skipped image count, [(label, prediction)]) for the samples of one folder."""
    from cogvlm.utils.inference.chat import ChatRequest
    from cogvlm.utils.inference.generation import SamplingConfig
    from cogvlm.utils.training.data import AccuracyRow, exact_match, load_images_skipping_bad

    loaded, skipped = load_images_skipping_bad(samples)
    requests = []
    for sample, picture in loaded:
        prompt = chat.processor(sample.query, sample.history, picture)
        sampling = SamplingConfig(max_length=len(prompt) + max_new_tokens)      # greedy
        requests.append(ChatRequest(sample.query, sample.history, prompt.images, sampling))
    predictions = [answer.text for answer in chat.answer_batch(requests, num_slots=batch_size)]
    labels = [sample.answer for sample, _ in loaded]
    exact, case_insensitive = exact_match(predictions, labels) if labels else (0.0, 0.0)
    return AccuracyRow(Path(folder).name, len(labels), exact, case_insensitive), skipped, list(zip(labels, predictions))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from_pretrained", required=True)
    parser.add_argument("--data", nargs="+", required=True, help="folders of images named by their text")
    parser.add_argument("--local_tokenizer", default="lmsys/vicuna-7b-v1.5")
    parser.add_argument("--version", default="chat", help="prompt template unless the checkpoint names one")
    parser.add_argument("--query", default=None)
    parser.add_argument("--max_new_tokens", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=1, help="images generated together")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--bf16", action="store_true")
    precision.add_argument("--fp16", action="store_true")
    add_quant_arguments(parser)
    add_decoding_arguments(parser)
    parser.add_argument("--show", type=int, default=5, help="print this many (label, prediction) pairs per split")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        print(f"Error: --batch_size must be at least 1, got {args.batch_size}", file=sys.stderr)
        return 1

    import torch

    from cogvlm.utils.inference.chat import ChatModel
    from cogvlm.utils.quantization.weight_only import QuantConfig
    from cogvlm.utils.training.data import CAPTCHA_QUERY, captcha_samples, format_accuracy_table

    try:        # the folders first: a wrong path is reported before the minutes a large checkpoint takes to load
        samples = {folder: captcha_samples(folder, args.query or CAPTCHA_QUERY) for folder in args.data}
    except FileNotFoundError as problem:                        # a --data folder that is not there or empty
        print(f"Error: --data: {problem}", file=sys.stderr)
        return 1
    try:
        quant = QuantConfig.from_args(args)
        chat = ChatModel.from_pretrained(args.from_pretrained, args.local_tokenizer, args.version,
                                         torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32,
                                         "cuda" if torch.cuda.is_available() else "cpu", quant=quant,
                                         compile=args.compile, prefill_dtype=args.prefill_dtype)
        rows = []
        for folder in args.data:
            row, skipped, pairs = evaluate(chat, folder, samples[folder], args.max_new_tokens, args.batch_size)
            rows.append(row)
            for label, prediction in pairs[:args.show]:
                print(f"{row.split}: label {label!r} -> {prediction!r}")
            if skipped:
                print(f"{row.split}: skipped {skipped} unreadable image(s)")
    except ValueError as problem:                               # checkpoint, download or tokenizer errors
        print(f"Error: {problem}", file=sys.stderr)
        return 1
    print(format_accuracy_table(rows))
    return 0


if __name__ == "__main__":
    warn_if_other_checkout(__file__)
    sys.exit(main())
