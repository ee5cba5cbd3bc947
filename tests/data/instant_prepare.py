"""A harness without a scorer, as harnesses were before trusted evaluation: it describes its
profile and prepares nothing. Paired with instant_genome.py for tests of the engine's loop,
which then believes the summary block the genome prints (a self-reported search)."""
import argparse
import json

FACTS = {"profile": "tiny", "vocab_size": 512, "seq_len": 128, "eval_tokens": 16384, "time_budget": 5,
         "startup_grace": 60, "data": "shakespeare", "cuda_devices": 0}

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--describe", action="store_true")
    parser.add_argument("--profile")
    parser.add_argument("--source")
    parser.add_argument("--cache-dir")
    args = parser.parse_args()
    if args.describe:
        print(json.dumps({**FACTS, "profile": args.profile or "tiny", "data": args.source or "shakespeare"}))
