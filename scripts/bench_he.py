"""Encrypted scoring cost, side by side in one run: ours vs the naive per-candidate `dot`
(the paper's code) vs plaintext numpy (the floor).

(a) tip_hf per-example release: complex-pair column layout, N/2 = 4096 candidates per
    ciphertext, k/2 plaintext multiplications per block, no rotation; time per candidate
    includes reading the store, encoding the seller's plaintexts, conjugation, flooding and
    serialisation. One process (SEAL is single-threaded). Also the per-corpus release.
(b) naive: TenSEAL `CKKSVector.dot` of the encrypted query with each candidate's plaintext
    sketch (one ciphertext per candidate, log2 k rotations), same ring N=8192.
(c) plaintext numpy ``G @ q``.

    python scripts/bench_he.py              # ~3 min on one core
    python scripts/bench_he.py --quick      # ~30 s
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import tenseal as ts
import torch

from tip_hf import SketchStore, ValuationSpec
from tip_hf.he import BuyerKeys, ReleasePolicy, decrypt_scores, encrypt_query, score_encrypted


def naive_ms_per_candidate(k: int, sketches: np.ndarray, q: np.ndarray) -> float:
    context = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 60])
    context.global_scale = 2.0**40
    context.generate_galois_keys()
    enc_q = ts.ckks_vector(context, q.tolist())
    enc_q.dot(sketches[0].tolist())  # warm-up
    t0 = time.perf_counter()
    for row in sketches:
        enc_q.dot(row.tolist())
    return (time.perf_counter() - t0) / len(sketches) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--n", type=int, default=100_000, help="candidates (k=4096 uses n/5 to bound RAM)")
    parser.add_argument("--naive-n", type=int, default=16, help="candidates for the naive baseline")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.n, args.dims = 10_000, [256, 1024]
    torch.set_num_threads(1)
    keys = BuyerKeys.generate()
    rng = np.random.default_rng(0)
    print(
        f"CKKS N=8192 {list(keys.public.params.coeff_mod_bit_sizes)}, scales 2^{keys.public.params.query_scale_bits}"
        f" x 2^{keys.public.params.plain_scale_bits} (no rescale), 40-bit flooding; "
        f"one process; public context {len(keys.public.to_message().to_bytes()) / 1e6:.2f} MB\n"
    )
    header = (
        f"{'k':>5}{'N':>8}{'ours ms/cand':>14}{'naive ms/cand':>15}{'numpy ms/cand':>15}{'naive/ours':>12}"
        f"{'query MB':>10}{'result B/cand':>15}{'corpus s':>10}{'max rel err':>13}"
    )
    print(header)
    for k in args.dims:
        n = args.n if k < 4096 else args.n // 5
        sketches = rng.normal(size=(n, k)).astype(np.float32)
        labels = [f"c{i % 10}" for i in range(n)]
        q = rng.normal(size=k)
        spec = ValuationSpec(targets=["bench"], proj_dim=k)
        with tempfile.TemporaryDirectory() as tmp:
            store = SketchStore.from_arrays(Path(tmp) / "s", torch.from_numpy(sketches), labels, spec, "f" * 64)
            query = encrypt_query(q, keys, spec)
            t0 = time.perf_counter()
            result = score_encrypted(
                query, store, keys.public, "example", ReleasePolicy(allow_example_release=True), progress=False
            )
            ours = (time.perf_counter() - t0) / n * 1e3
            t0 = time.perf_counter()
            score_encrypted(query, store, keys.public, "corpus", progress=False)
            corpus_s = time.perf_counter() - t0
            values = decrypt_scores(result, keys).values
        t0 = time.perf_counter()
        exact = sketches.astype(np.float64) @ q
        floor = (time.perf_counter() - t0) / n * 1e3
        err = np.abs(values - exact).max() / np.abs(exact).max()
        naive = naive_ms_per_candidate(k, sketches[: args.naive_n], q)
        print(
            f"{k:>5}{n:>8}{ours:>14.4f}{naive:>15.2f}{floor:>15.6f}{naive / ours:>11.0f}x"
            f"{len(query.to_bytes()) / 1e6:>10.1f}{len(result.to_bytes()) / n:>15.1f}{corpus_s:>10.2f}{err:>13.1e}"
        )
    print("\npaper (TIP reference code): ~150 ms of FHE per scored sample")


if __name__ == "__main__":
    main()
