"""Cost of token reductions with attention masks (issue 13).

    PYTHONPATH=. python3 benchmarks/bench_tokens.py [--repeats 3] [--n 256]

A BERT-style encoder (random init, hidden 256, 4 blocks, 4 heads), sentences of 16-128 random
tokens padded per batch of 32 (the attention mask marks the real ones), default layers
(embeddings, 4 blocks, pooler). For each token reduction, ``CKA(...).compute`` (minibatch,
model compared with itself) against the bare forward passes of the model twice on the same
batches (what the measure needs at least), interleaved in one process; ratio = CKA time / bare
time of the same repeat, median over repeats. Also the rows the measure sees per batch.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings

import torch
import transformers

from simtorch_semantic import CKA, SimilarityModel

REDUCTIONS = ("flatten", "mean", "first", "last", "tokens")


def make_batches(n, batch_size, vocab, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(16, 129, (n,), generator=gen)
    batches = []
    for start in range(0, n, batch_size):
        lens = lengths[start:start + batch_size]
        T = int(lens.max())
        ids = torch.randint(1, vocab, (len(lens), T), generator=gen)
        mask = (torch.arange(T)[None, :] < lens[:, None]).long()
        batches.append({"input_ids": ids * mask, "attention_mask": mask})
    return batches


def bare(model, batches):
    start = time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            model(**batch)
            model(**batch)
    return time.perf_counter() - start


def measured(model, batches, how):
    a = SimilarityModel(model, token_reduction=how)
    b = SimilarityModel(model, token_reduction=how)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = CKA(a, b).compute(batches, progress=False)
    return time.perf_counter() - start, result.n_samples


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n", type=int, default=256)
    args = parser.parse_args()
    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=1000, hidden_size=256, num_hidden_layers=4,
                                  num_attention_heads=4, intermediate_size=1024,
                                  max_position_embeddings=160)
    model = transformers.BertModel(cfg).eval()
    batches = make_batches(args.n, 32, cfg.vocab_size)
    print(f"# {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"# N = {args.n} sentences of 16-128 tokens, batch 32, {args.repeats} repeats")
    bare(model, batches[:1])                                   # warm-up
    print("| reduction | rows seen | bare (s, median) | CKA.compute (s, median) | ratio median |")
    print("|---|---|---|---|---|")
    for how in REDUCTIONS:
        bares, cka_times, ratios = [], [], []
        rows = None
        for _ in range(args.repeats):
            t_bare = bare(model, batches)
            t_cka, rows = measured(model, batches, how)
            bares.append(t_bare)
            cka_times.append(t_cka)
            ratios.append(t_cka / t_bare)
        print(f"| {how} | {rows} | {statistics.median(bares):.2f} | "
              f"{statistics.median(cka_times):.2f} | {statistics.median(ratios):.3f} |")
    print(f"# load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
