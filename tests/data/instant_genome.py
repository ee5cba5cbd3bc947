"""A genome that scores its hyperparameters at once: for measuring the engine, not the model."""
import math
LR = 0.04                # a rate
DEPTH = 4                # a depth
WARMDOWN_RATIO = 0.5     # a ratio
BATCH = 64               # a power of two


def main():
    import os, time
    time.sleep(float(os.environ.get("EVO_TEST_SLEEP", "0")))  # lets a test catch a trial while it runs
    if os.environ.get("EVO_TEST_CRASH"):  # a machine that fails every trial (a driver, a full GPU) until fixed
        raise RuntimeError(os.environ["EVO_TEST_CRASH"])
    score = 1 + (math.log(LR / 0.03)) ** 2 + 0.01 * (DEPTH - 6) ** 2 + (WARMDOWN_RATIO - 0.4) ** 2 + 0.001 * abs(math.log2(BATCH / 128))
    noise = float(os.environ.get("EVO_TEST_NOISE", "0"))  # sd of a seed-dependent error, as training has
    if noise:
        import random
        score += noise * random.Random(f"{os.environ.get('EVO_SEED', '0')}:{score!r}").gauss(0, 1)
    budget = float(os.environ.get("EVO_TIME_BUDGET", "1"))
    score -= 0.01 * math.log(budget)  # a larger budget (a promoted rung) trains a little further
    pace = float(os.environ.get("EVO_TEST_STEP_SLEEP", "0"))
    for i in range(1, 11):  # progress lines, as train.py prints them, so the pruner has something to judge
        print(f"step {i:05d} | {10.0 * i:5.1f}% | loss {score + 1.0 - 0.1 * i:.6f} | lrm 1.00", flush=True)
        time.sleep(pace)
    print("---")
    # training_seconds: what it was given, as if it used it all
    for key, value in [("val_bpb", score), ("training_seconds", budget), ("total_seconds", 0.0), ("peak_vram_mb", 1.0),
                       ("mfu_percent", 0.0), ("total_tokens_M", 0.0), ("num_steps", 1), ("num_params_M", 0.0), ("depth", DEPTH)]:
        print(f"{key}: {value}", flush=True)


if __name__ == "__main__":
    main()
