"""Encrypted scoring cost, side by side in one run: the packed query layout vs the column
layout (the previous one) vs the naive per-candidate `dot` (the paper's code) vs plaintext
numpy (the floor). One process, `torch.set_num_threads(1)` (SEAL is single-threaded).

Part 1, per-corpus release (the default product path): for each k, one query of each
layout over a store of ``--corpus-n`` examples in ``--corpora`` corpora; bytes each way
(query up, scores down), the one-time public context, seconds for the whole
``score_encrypted`` (reading the store included) and the error against plaintext.

Part 2, per-example release: ms per candidate under each layout (columns: k/2 products per
block of 4096 candidates, no rotation; packed: 4096 products and rotations per block), vs
(b) TenSEAL `CKKSVector.dot` per candidate, vs (c) numpy ``G @ q``.

    python scripts/bench_he.py              # ~6 min on one core
    python scripts/bench_he.py --quick      # ~1 min
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import tenseal as ts
import tenseal.sealapi as seal
import torch

from tip_hf import SketchStore, ValuationSpec
from tip_hf.he import BuyerKeys, ReleasePolicy, decrypt_scores, encrypt_query, score_encrypted
from tip_hf.he import seal as S
from tip_hf.he.params import COLUMNS, PACKED

NAMES = {PACKED: "packed (new)", COLUMNS: "columns (previous)"}


def naive_ms_per_candidate(sketches: np.ndarray, q: np.ndarray) -> float:
    context = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 60])
    context.global_scale = 2.0**40
    context.generate_galois_keys()
    enc_q = ts.ckks_vector(context, q.tolist())
    enc_q.dot(sketches[0].tolist())  # warm-up
    t0 = time.perf_counter()
    for row in sketches:
        enc_q.dot(row.tolist())
    return (time.perf_counter() - t0) / len(sketches) * 1e3


def conjugation_only_context_mb(keys: BuyerKeys) -> float:
    """The public context of the previous release: parameters, public key, the conjugation key."""
    keygen = seal.KeyGenerator(keys.public.context)
    galois = seal.GaloisKeys()
    keygen.create_galois_keys([keys.public.conjugation_element], galois)
    return (len(keys.public.blobs[0]) + len(keys.public.blobs[1]) + len(S.to_bytes(galois))) / 1e6


def store_of(tmp: str, sketches: np.ndarray, corpora: int, k: int, prefix: str = "") -> SketchStore:
    labels = [f"c{i % corpora}" for i in range(len(sketches))]
    spec = ValuationSpec(targets=["bench"], proj_dim=k)
    path = Path(tmp) / f"{prefix}s{k}-{corpora}"
    return SketchStore.from_arrays(path, torch.from_numpy(sketches), labels, spec, "f" * 64)


def per_corpus(keys: BuyerKeys, dims: list[int], n: int, corpora: int, rng: np.random.Generator) -> None:
    print(f"Per-corpus release: {n} examples in {corpora} corpora")
    print(f"{'k':>5}  {'layout':<20}{'query up MB':>12}{'scores down KB':>15}{'score s':>9}{'max rel err':>13}")
    for k in dims:
        sketches = rng.normal(size=(n, k)).astype(np.float32)
        q = rng.normal(size=k)
        labels = np.arange(n) % corpora
        exact = np.array([sketches[labels == c].astype(np.float64).sum(0) @ q for c in range(corpora)])
        with tempfile.TemporaryDirectory() as tmp:
            store = store_of(tmp, sketches, corpora, k)
            for layout in (PACKED, COLUMNS):
                query = encrypt_query(q, keys, store.spec, layout=layout)
                t0 = time.perf_counter()
                result = score_encrypted(query, store, keys.public, "corpus", progress=False)
                seconds = time.perf_counter() - t0
                table = decrypt_scores(result, keys)
                got = np.array([table[f"c{c}"]["sum"] for c in range(corpora)])
                err = np.abs(got - exact).max() / np.abs(exact).max()
                print(
                    f"{k:>5}  {NAMES[layout]:<20}{len(query.to_bytes()) / 1e6:>12.2f}"
                    f"{len(result.to_bytes()) / 1e3:>15.1f}{seconds:>9.2f}{err:>13.1e}"
                )


def per_example(keys: BuyerKeys, dims: list[int], n: int, packed_n: int, naive_n: int, rng) -> None:
    print(f"\nPer-example release ({n} candidates; packed: {packed_n}, one block)")
    print(f"{'k':>5}  {'layout':<20}{'ms/cand':>9}{'naive ms/cand':>15}{'numpy ms/cand':>15}{'max rel err':>13}")
    policy = ReleasePolicy(allow_example_release=True)
    for k in dims:
        count = n if k < 4096 else n // 5
        sketches = rng.normal(size=(count, k)).astype(np.float32)
        q = rng.normal(size=k)
        t0 = time.perf_counter()
        exact = sketches.astype(np.float64) @ q
        floor = (time.perf_counter() - t0) / count * 1e3
        naive = naive_ms_per_candidate(sketches[:naive_n], q)
        with tempfile.TemporaryDirectory() as tmp:
            for layout in (PACKED, COLUMNS):
                m = min(count, packed_n) if layout == PACKED else count
                store = store_of(tmp, sketches[:m], 10, k, f"{layout.split('/')[0]}-")
                query = encrypt_query(q, keys, store.spec, layout=layout)
                t0 = time.perf_counter()
                result = score_encrypted(query, store, keys.public, "example", policy, progress=False)
                ms = (time.perf_counter() - t0) / m * 1e3
                values = decrypt_scores(result, keys).values
                err = np.abs(values - exact[:m]).max() / np.abs(exact[:m]).max()
                print(f"{k:>5}  {NAMES[layout]:<20}{ms:>9.3f}{naive:>15.2f}{floor:>15.6f}{err:>13.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--corpora", type=int, default=100)
    parser.add_argument("--corpus-n", type=int, default=10_000, help="examples in the per-corpus store")
    parser.add_argument("--n", type=int, default=20_000, help="per-example candidates (k=4096: n/5)")
    parser.add_argument("--packed-n", type=int, default=4096, help="per-example candidates under a packed query")
    parser.add_argument("--naive-n", type=int, default=16, help="candidates for the naive baseline")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.n, args.packed_n, args.corpus_n, args.dims = 4096, 512, 2000, [256, 4096]
    torch.set_num_threads(1)
    keys = BuyerKeys.generate()
    params = keys.public.params
    print(
        f"CKKS N={params.poly_modulus_degree} {list(params.coeff_mod_bit_sizes)}, scales 2^{params.query_scale_bits}"
        f" x 2^{params.plain_scale_bits} (no rescale), 40-bit flooding; one process.\n"
        f"One-time public context: {len(keys.public.to_message().to_bytes()) / 1e6:.2f} MB with the rotation keys "
        f"(packed and columns), {conjugation_only_context_mb(keys):.2f} MB with the conjugation key only (previous)\n"
    )
    rng = np.random.default_rng(0)
    per_corpus(keys, args.dims, args.corpus_n, args.corpora, rng)
    per_example(keys, args.dims, args.n, args.packed_n, args.naive_n, rng)
    print("\npaper (TIP reference code): ~150 ms of FHE per scored sample")


if __name__ == "__main__":
    main()
