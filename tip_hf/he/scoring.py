"""The encrypted side of TIP: query encryption (buyer), scoring (seller), decryption (buyer).

Layout ("complex pairs", column-wise): query ciphertext ``t`` holds the complex number
``a_t = q[2t] - i q[2t+1]`` in every slot; for a block of up to N/2 candidates (or corpora)
the seller encodes plaintext ``t`` with ``(s[:, 2t] + i s[:, 2t+1]) / 2``. Then

    acc = sum_t Enc(a_t) * b_t          (k/2 plaintext multiplications, no rotation)
    out = acc + conj(acc)               (one key switch per result ciphertext)

and slot ``i`` of ``out`` decrypts to ``Re(sum_t a_t b_t[i]) = <q, s_i>``, imaginary part 0.
Two coordinates per slot halve both the upload and the seller's work against one
coordinate per ciphertext. Any complex query is equivalent to the real query
``q'[2t] = Re a_t, q'[2t+1] = -Im a_t``: the conjugation leaves no imaginary side channel
(docs/threat-model.md).

Before release each result ciphertext is (1) conjugation-symmetrised, (2) flooded with
Gaussian noise of std ``2^flood_bits`` (in normalised value units, ~2^11 times the scheme's
own noise with the default preset) so the decryption noise no longer depends on the
seller's data, (3) optionally noised for differential privacy, and (4) re-randomised by
adding a fresh public-key encryption of zero. Slots that are not released hold 0 before
flooding.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import secrets
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import tenseal.sealapi as seal
import torch
from tqdm.auto import tqdm

from ..distributed import rank_and_world
from ..errors import SpecMismatchError, TIPError
from ..spec import ValuationSpec
from ..store import SketchStore
from ..values import CorpusRows
from . import seal as S
from .keys import BuyerKeys, PublicContext
from .messages import Message, MessageError, read_message

__all__ = [
    "ReleasePolicy",
    "PolicyError",
    "EncryptedQuery",
    "ScoreTable",
    "encrypt_query",
    "score_encrypted",
    "decrypt_scores",
    "verify_commitment",
]

QUERY_KIND = "tip_hf.query"
RESULT_KIND = "tip_hf.scores"


class PolicyError(TIPError, PermissionError):
    """The seller's release policy forbids what was asked (per-example release, budget)."""


@dataclass(frozen=True)
class ReleasePolicy:
    """What the seller agrees to release. The defaults restrict nothing beyond what the
    seller asks ``score_encrypted`` for; :meth:`conservative` is the recommended standing
    policy when the buyer is not trusted (docs/threat-model.md).

    Attributes:
        min_examples: corpora with fewer examples are withheld (their slots stay empty), so a
            released aggregate never describes one or a few examples.
        allow_example_release: permit ``release="example"`` (one value per example).
        noise_multiplier: if set, add Gaussian noise of std
            ``noise_multiplier * clip_norm * query_norm_bound`` to every released *sum* (and
            the same divided by the count to every mean), in the units of the encrypted
            query: the Gaussian mechanism for one example's contribution. In the buyer's
            units the std is that times ``2^e >= |q|``, the power of two the buyer divided
            its query by.
        clip_norm: clip every sketch to this L2 norm before aggregating (needed for noise).
        query_norm_bound: the declared L2 bound on the *encrypted* query;
            :func:`encrypt_query` always sends ``|q| <= 1``. The seller cannot check it: an
            honest-but-curious buyer is assumed (docs/threat-model.md).
        max_queries: answer at most this many queries per buyer context (ledger file).
        ledger: JSON file counting answered queries per context hash.
    """

    min_examples: int = 1
    allow_example_release: bool = True
    noise_multiplier: float | None = None
    clip_norm: float | None = None
    query_norm_bound: float = 1.0
    max_queries: int | None = None
    ledger: str | None = None

    @classmethod
    def conservative(cls, **overrides: object) -> ReleasePolicy:
        """Aggregates of >= 10 examples only, no per-example values."""
        return cls(**{"min_examples": 10, "allow_example_release": False, **overrides})  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        if self.min_examples < 1:
            raise ValueError(f"`min_examples` must be >= 1, got {self.min_examples}.")
        if self.noise_multiplier is not None and (self.noise_multiplier <= 0 or self.clip_norm is None):
            raise ValueError("`noise_multiplier` must be > 0 and needs `clip_norm` (the sensitivity).")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ValueError(f"`clip_norm` must be > 0, got {self.clip_norm}.")
        if self.max_queries is not None and self.ledger is None:
            raise ValueError("`max_queries` needs a `ledger` file to count queries in.")


# ---------------------------------------------------------------------------------------
# buyer: encrypt the query
# ---------------------------------------------------------------------------------------
@dataclass
class EncryptedQuery:
    """``Enc(q)`` ready to send: :meth:`to_bytes` / :meth:`save`. Holds no secret."""

    message: Message

    @property
    def query_id(self) -> str:
        return self.message.header["query_id"]

    def to_bytes(self) -> bytes:
        return self.message.to_bytes()

    def save(self, path: str | os.PathLike[str]) -> None:
        self.message.save(path)


def _binding(spec: ValuationSpec | None, fingerprint: str | None) -> dict[str, object]:
    settings = None if spec is None else hashlib.sha256(json.dumps(spec.sketch_settings(), sort_keys=True).encode())
    return {"fingerprint": fingerprint, "spec_settings": None if settings is None else settings.hexdigest()}


def encrypt_query(
    q: np.ndarray | torch.Tensor,
    keys: BuyerKeys,
    spec: ValuationSpec | None = None,
    *,
    fingerprint: str | None = None,
    model: torch.nn.Module | None = None,
) -> EncryptedQuery:
    """Encrypt the buyer's query vector ``q`` (``[k]``, real) under its own secret key.

    The query is divided by a power of two ``2^e >= |q|`` so every value fits the CKKS range;
    ``e`` stays with the buyer (``keys.query_exponents``) and decryption undoes it. The
    message is bound to the public context (hash) and to the spec -- to the full
    spec/model ``fingerprint`` when given (or computed from ``model``), else to the spec's
    sketch settings -- and the seller refuses to score a store that does not match.
    """
    q = np.asarray(q.detach().cpu().numpy() if isinstance(q, torch.Tensor) else q)
    if np.iscomplexobj(q):
        raise ValueError("The query must be real; got a complex vector.")
    q = q.astype(np.float64).reshape(-1)
    if q.size == 0 or not np.all(np.isfinite(q)):
        raise ValueError("The query must be a non-empty vector of finite numbers.")
    if spec is not None and q.size != spec.proj_dim:
        raise ValueError(f"The query has {q.size} entries but the spec's proj_dim is {spec.proj_dim}.")
    if model is not None and fingerprint is None:
        if spec is None:
            raise ValueError("Pass `spec` with `model` to bind the query to the spec fingerprint.")
        fingerprint = spec.fingerprint(model)
    norm = float(np.linalg.norm(q))
    exponent = math.ceil(math.log2(norm)) if norm > 0 else 0
    scaled = q / 2.0**exponent
    if scaled.size % 2:
        scaled = np.append(scaled, 0.0)
    params, context = keys.public.params, keys.public.context
    encoder = seal.CKKSEncoder(context)
    encryptor = seal.Encryptor(context, keys.secret_key)  # symmetric: seeded, half the bytes
    blobs = []
    for t in range(scaled.size // 2):
        plain = seal.Plaintext()
        encoder.encode(complex(scaled[2 * t], -scaled[2 * t + 1]), 2.0**params.scale_bits, plain)
        blobs.append(S.to_bytes(encryptor.encrypt_symmetric(plain)))
    query_id = secrets.token_hex(16)
    header = {
        "query_id": query_id,
        "context_hash": keys.context_hash,
        "proj_dim": int(q.size),
        "layout": "complex-pairs/1",
        "scale_bits": params.scale_bits,
        **_binding(spec, fingerprint),
    }
    keys.remember_query(query_id, exponent)
    return EncryptedQuery(Message(QUERY_KIND, header, blobs))


# ---------------------------------------------------------------------------------------
# seller: score
# ---------------------------------------------------------------------------------------
class _Scorer:
    """Loaded query + context: turns plaintext blocks ``[rows, k]`` into result ciphertexts."""

    def __init__(self, query: Message, public: PublicContext) -> None:
        self.public, self.params = public, public.params
        context = public.context
        self.encoder, self.evaluator = seal.CKKSEncoder(context), seal.Evaluator(context)
        self.encryptor = seal.Encryptor(context, public.public_key)
        self.scale = 2.0**self.params.scale_bits
        self.k = int(query.header["proj_dim"])
        expected = math.ceil(self.k / 2)
        if len(query.blobs) != expected:
            raise MessageError(
                f"The query declares k={self.k} and so {expected} ciphertexts, but holds {len(query.blobs)}."
            )
        self.cts = [self._checked(context, blob, t) for t, blob in enumerate(query.blobs)]
        self.rng = np.random.default_rng(secrets.randbits(128))

    def _checked(self, context: seal.SEALContext, blob: bytes, t: int) -> seal.Ciphertext:
        try:
            ct = S.load(seal.Ciphertext, context, blob)
        except (RuntimeError, ValueError) as e:
            raise MessageError(f"Query ciphertext {t} does not load under the public context: {e}") from e
        problems = []
        if not seal.is_valid_for(ct, context):
            problems.append("not valid for the context")
        if ct.size() != 2:
            problems.append(f"size {ct.size()} (a fresh ciphertext has 2)")
        if ct.parms_id() != context.first_parms_id():
            problems.append("not at the top modulus level")
        if not ct.is_ntt_form():
            problems.append("not in NTT form")
        if ct.scale != self.scale:
            problems.append(f"scale {ct.scale!r} instead of 2^{self.params.scale_bits}")
        if problems:
            raise MessageError(f"Query ciphertext {t} is malformed ({'; '.join(problems)}); refusing to score it.")
        return ct

    def encrypt_block(self, rows: np.ndarray, noise: np.ndarray | None) -> bytes:
        """``rows``: ``[m <= N/2, k]`` normalised values; returns the released ciphertext."""
        slots = self.params.slots
        if rows.shape[0] > slots:
            raise ValueError("block larger than the slot count")
        if rows.shape[1] % 2:
            rows = np.pad(rows, ((0, 0), (0, 1)))
        # one contiguous row per query ciphertext; SEAL zero-pads a short vector to all slots
        pairs = np.ascontiguousarray(((rows[:, 0::2] + 1j * rows[:, 1::2]) / 2).T)
        acc = None
        for t, ct in enumerate(self.cts):
            column = pairs[t]
            if not column.any():
                continue
            plain, product = seal.Plaintext(), seal.Ciphertext()
            self.encoder.encode(column.tolist(), ct.parms_id(), self.scale, plain)
            self.evaluator.multiply_plain(ct, plain, product)
            if acc is None:
                acc = product
            else:
                self.evaluator.add_inplace(acc, product)
        if acc is None:  # nothing to release in this block: an encryption of zero
            acc = seal.Ciphertext()
            self.encryptor.encrypt_zero(self.public.context.first_parms_id(), acc)
            acc.scale = self.scale * self.scale
        self.evaluator.rescale_to_next_inplace(acc)
        conjugate = seal.Ciphertext()
        self.evaluator.complex_conjugate(acc, self.public.galois_keys, conjugate)
        self.evaluator.add_inplace(acc, conjugate)
        flood = self.rng.normal(0.0, 2.0**self.params.flood_bits, slots)
        if noise is not None:
            flood[: noise.size] += noise
        plain = seal.Plaintext()
        self.encoder.encode(flood.tolist(), acc.parms_id(), acc.scale, plain)
        self.evaluator.add_plain_inplace(acc, plain)
        zero = seal.Ciphertext()
        self.encryptor.encrypt_zero(acc.parms_id(), zero)
        zero.scale = acc.scale
        self.evaluator.add_inplace(acc, zero)
        return S.to_bytes(acc)


def _pow2_at_least(x: float) -> int:
    return math.ceil(math.log2(x)) if x > 0 else 0


def _clip(sketches: torch.Tensor, clip: float | None) -> torch.Tensor:
    if clip is None:
        return sketches
    norms = sketches.norm(dim=1, keepdim=True).clamp(min=1e-30)
    return sketches * (clip / norms).clamp(max=1.0)


def _check_budget(policy: ReleasePolicy, context_hash: str) -> None:
    if policy.ledger is None:
        return
    rank, world = rank_and_world()
    if world > 1:  # one query is one query, however many processes answer it: rank 0 counts
        verdict: list[object] = [None]
        if rank == 0:
            try:
                _count_query(policy, context_hash)
            except PolicyError as err:
                verdict = [str(err)]
        torch.distributed.broadcast_object_list(verdict, src=0)
        if verdict[0] is not None:
            raise PolicyError(str(verdict[0]))
        return
    _count_query(policy, context_hash)


def _count_query(policy: ReleasePolicy, context_hash: str) -> None:
    assert policy.ledger is not None
    path = Path(policy.ledger)
    counts = json.loads(path.read_text()) if path.is_file() else {}
    used = int(counts.get(context_hash, 0))
    if policy.max_queries is not None and used >= policy.max_queries:
        raise PolicyError(f"This buyer's query budget is spent ({used} of {policy.max_queries} queries answered).")
    counts[context_hash] = used + 1
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(counts, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _blocks(store: SketchStore, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Stream blocks of ``<= size`` examples across shards: (sketches ``[n, k]``, ids
    ``[n, 32]`` uint8, corpus codes ``[n]``)."""
    held: list[tuple[torch.Tensor, ...]] = []
    count = 0
    for shard in store.shards():
        held.append((shard.sketches, shard.ids, shard.corpus))
        count += len(shard.sketches)
        while count >= size:
            joined = [torch.cat(parts) for parts in zip(*held, strict=True)]
            yield tuple(part[:size] for part in joined)  # type: ignore[misc]
            held, count = [tuple(part[size:] for part in joined)], count - size
    if count:
        yield tuple(torch.cat(parts) for parts in zip(*held, strict=True))  # type: ignore[misc]


def score_encrypted(
    query_msg: EncryptedQuery | Message | bytes | str | os.PathLike[str],
    store: SketchStore | str | os.PathLike[str],
    public_ctx: PublicContext | BuyerKeys | Message | bytes | str | os.PathLike[str],
    release: Literal["corpus", "example"] = "corpus",
    policy: ReleasePolicy | None = None,
    *,
    workers: int = 1,
    progress: bool = True,
) -> Message:
    """Seller side: encrypted value of every corpus (sum, mean, count) or, if the policy
    allows, of every example, under the buyer's key. Returns the result message, which also
    carries a commitment (SHA-256 hash root) to exactly the examples scored.

    ``workers > 1`` spreads per-example blocks over that many processes (SEAL is
    single-threaded); results are identical, blocks stay in store order.

    Raises:
        MessageError: the query or context is malformed, truncated or for another context.
        SpecMismatchError: the query was made for another spec/model than the store's.
        PolicyError: the release policy forbids the request.
    """
    policy = policy or ReleasePolicy()
    query = read_message(query_msg.message if isinstance(query_msg, EncryptedQuery) else query_msg, QUERY_KIND)
    if isinstance(public_ctx, BuyerKeys):  # convenience in one-process use: only .public is read
        public_ctx = public_ctx.public
    public = public_ctx if isinstance(public_ctx, PublicContext) else PublicContext.load(public_ctx)
    store = store if isinstance(store, SketchStore) else SketchStore(store)
    if query.header.get("context_hash") != public.hash:
        raise MessageError(
            "The query was encrypted under a different public context than the one given. "
            "Use the buyer's public context that came with this query."
        )
    _check_binding(query.header, store)
    if int(query.header["proj_dim"]) != store.proj_dim:
        raise SpecMismatchError(
            "The sketch dimension",
            store.proj_dim,
            query.header["proj_dim"],
            "The query and the store must use the same proj_dim.",
        )
    if release not in ("corpus", "example"):
        raise ValueError(f"Invalid `release`: {release!r}. Must be 'corpus' or 'example'.")
    if release == "example" and not policy.allow_example_release:
        raise PolicyError(
            "The release policy does not allow per-example values; use release='corpus' or "
            "ReleasePolicy(allow_example_release=True)."
        )
    if not store.complete:
        raise TIPError(f"The store at '{store.path}' is incomplete; finish sketching (resume) before scoring.")
    scorer = _Scorer(query, public)
    _check_budget(policy, public.hash)
    header: dict[str, object] = {
        "query_id": query.header["query_id"],
        "context_hash": public.hash,
        "release": release,
        "store_fingerprint": store.fingerprint,
        "flood_bits": public.params.flood_bits,
        "policy": asdict(policy),
    }
    if release == "corpus":
        rank, world = rank_and_world()
        if world > 1:  # one plaintext pass and k/2 products: the main process does it, all get it
            payload: list[object] = [None]
            if rank == 0:
                blobs = _score_corpora(scorer, store, policy, header, progress)
                payload = [(header, blobs)]
            torch.distributed.broadcast_object_list(payload, src=0)
            header, blobs = payload[0]  # type: ignore[misc]
        else:
            blobs = _score_corpora(scorer, store, policy, header, progress)
    else:
        blobs = _score_examples(scorer, store, policy, header, progress, workers, (query, public))
    return Message(RESULT_KIND, header, blobs)


def _check_binding(header: dict[str, object], store: SketchStore) -> None:
    fingerprint = header.get("fingerprint")
    if fingerprint is not None and fingerprint != store.fingerprint:
        raise SpecMismatchError(
            "The spec/model fingerprint of the query",
            store.fingerprint,
            fingerprint,
            "The buyer's query was made for another model or spec than these sketches.",
        )
    settings = header.get("spec_settings")
    if settings is not None and settings != _binding(store.spec, None)["spec_settings"]:
        raise SpecMismatchError(
            "The spec of the query",
            store.spec.sketch_settings(),
            "(another spec)",
            "The buyer's query was made with other sketch settings than these sketches.",
        )


def _score_corpora(
    scorer: _Scorer, store: SketchStore, policy: ReleasePolicy, header: dict, progress: bool
) -> list[bytes]:
    names = store.corpora
    totals = torch.zeros(len(names), store.proj_dim, dtype=torch.float64)
    counts = np.zeros(len(names), dtype=np.int64)
    digests = [hashlib.sha256() for _ in names]
    seen: list[set[bytes]] = [set() for _ in names]
    for shard in tqdm(store.shards(), total=len(store.manifest["shards"]), desc="aggregating", disable=not progress):
        codes = shard.corpus.long()
        totals.index_add_(0, codes, _clip(shard.sketches.double(), policy.clip_norm))
        counts += np.bincount(codes.numpy(), minlength=len(names))
        for code, example_id in zip(codes.tolist(), shard.ids.numpy(), strict=True):
            raw = example_id.tobytes()
            digests[code].update(raw)
            seen[code].add(raw)
    # `min_examples` counts *distinct* examples: copies of one example must not carry it past
    # the threshold (its value would be released). Values stay additive, as influence is.
    distinct = np.array([len(ids) for ids in seen], dtype=np.int64)
    sums = totals.numpy()
    released = distinct >= policy.min_examples
    means = sums / np.maximum(counts, 1)[:, None]
    sum_exp = _pow2_at_least(float(np.linalg.norm(sums[released], axis=1).max(initial=0.0)))
    mean_exp = _pow2_at_least(float(np.linalg.norm(means[released], axis=1).max(initial=0.0)))
    sigma = None
    if policy.noise_multiplier is not None:
        sigma = policy.noise_multiplier * policy.clip_norm * policy.query_norm_bound  # type: ignore[operator]
    per_ct = scorer.params.slots // 2
    blobs, corpora = [], []
    chunks = range(0, max(len(names), 1), per_ct)
    for chunk, lo in enumerate(tqdm(chunks, desc="scoring", disable=not progress)):
        idx = np.arange(lo, min(lo + per_ct, len(names)))
        keep = released[idx]
        rows = np.zeros((2 * len(idx), store.proj_dim))
        rows[: len(idx)][keep] = sums[idx][keep] / 2.0**sum_exp
        rows[len(idx) :][keep] = means[idx][keep] / 2.0**mean_exp
        noise = None
        if sigma is not None:
            noise = np.zeros(2 * len(idx))
            draw = scorer.rng.normal(0.0, sigma, len(idx))
            noise[: len(idx)] = np.where(keep, draw / 2.0**sum_exp, 0.0)
            noise[len(idx) :] = np.where(keep, draw / np.maximum(counts[idx], 1) / 2.0**mean_exp, 0.0)
        blobs.append(scorer.encrypt_block(rows, noise))
        for offset, c in enumerate(idx.tolist()):
            corpora.append(
                {
                    "name": names[c],
                    "count": int(counts[c]),
                    "distinct": int(distinct[c]),
                    "released": bool(released[c]),
                    "ciphertext": chunk,
                    "sum_slot": offset,
                    "mean_slot": len(idx) + offset,
                    "digest": digests[c].hexdigest(),
                }
            )
    header.update(
        corpora=corpora, exponents={"sum": sum_exp, "mean": mean_exp}, dp_sigma=sigma, commitment=_root(corpora)
    )
    return blobs


def _score_examples(
    scorer: _Scorer,
    store: SketchStore,
    policy: ReleasePolicy,
    header: dict,
    progress: bool,
    workers: int = 1,
    material: tuple[Message, PublicContext] | None = None,
) -> list[bytes]:
    blocks, digest = [], hashlib.sha256()
    names = store.corpora
    bar = tqdm(total=len(store), unit="ex", desc="scoring", disable=not progress)

    def jobs() -> Iterator[tuple[np.ndarray, int]]:
        for sketches, ids, codes in _blocks(store, scorer.params.slots):
            rows = _clip(sketches.double(), policy.clip_norm).numpy()
            exponent = _pow2_at_least(float(np.linalg.norm(rows, axis=1).max(initial=0.0)))
            digest.update(ids.numpy().tobytes())  # the ids in order, as their concatenation
            blocks.append({"count": len(ids), "exponent": exponent, "corpus": [names[c] for c in codes.tolist()]})
            yield rows / 2.0**exponent, len(ids)

    blobs: list[bytes] = []
    rank, world = rank_and_world()
    if world > 1:  # under accelerate launch / torchrun: block b is encrypted by rank b mod world
        mine = []
        for index, (rows, count) in enumerate(jobs()):
            if index % world == rank:
                mine.append((index, scorer.encrypt_block(rows, None)))
            bar.update(count)
        gathered: list[list[tuple[int, bytes]] | None] = [None] * world
        torch.distributed.all_gather_object(gathered, mine)
        blobs = [blob for _, blob in sorted(pair for part in gathered for pair in (part or []))]
    elif workers <= 1 or material is None:
        for rows, count in jobs():
            blobs.append(scorer.encrypt_block(rows, None))
            bar.update(count)
    else:
        query, public = material
        init = (query.to_bytes(), public.to_message().to_bytes())
        with ProcessPoolExecutor(workers, mp_context=_mp_context(), initializer=_worker_init, initargs=init) as pool:
            pending: deque = deque()
            for rows, count in jobs():
                pending.append((pool.submit(_worker_block, rows), count))
                while len(pending) > 2 * workers:  # bounded: memory stays flat as N grows
                    future, done = pending.popleft()
                    blobs.append(future.result())
                    bar.update(done)
            for future, done in pending:
                blobs.append(future.result())
                bar.update(done)
    bar.close()
    header.update(blocks=blocks, commitment={"root": digest.hexdigest(), "examples": len(store)})
    return blobs


_WORKER: _Scorer | None = None


def _mp_context() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _worker_init(query: bytes, public: bytes) -> None:
    global _WORKER
    _WORKER = _Scorer(Message.from_bytes(query, QUERY_KIND), PublicContext.load(public))


def _worker_block(rows: np.ndarray) -> bytes:
    assert _WORKER is not None
    return _WORKER.encrypt_block(rows, None)


def verify_commitment(
    result_msg: Message | bytes | str | os.PathLike[str], delivered: dict[str, list[bytes | str]]
) -> dict[str, bool]:
    """Buyer, after purchase: does each delivered corpus hold exactly the scored examples?

    Args:
        delivered: corpus name -> example ids in delivered order (``tip_hf.dataset.example_id``
            of each tokenised example, bytes or hex), for the corpora bought.

    Returns:
        ``{corpus: True/False}``; a corpus that was not scored raises ``KeyError``.
    """
    result = read_message(result_msg, RESULT_KIND)
    committed = {c["name"]: c for c in result.header.get("corpora", [])}
    if not committed:
        raise MessageError("These scores carry no per-corpus commitment (per-example release).")
    verdict = {}
    for name, ids in delivered.items():
        if name not in committed:
            raise KeyError(f"Corpus {name!r} was not scored; scored corpora: {sorted(committed)}.")
        h = hashlib.sha256()
        for example_id in ids:
            h.update(bytes.fromhex(example_id) if isinstance(example_id, str) else bytes(example_id))
        verdict[name] = h.hexdigest() == committed[name]["digest"] and len(ids) == committed[name]["count"]
    return verdict


def _root(corpora: list[dict]) -> dict[str, object]:
    h = hashlib.sha256()
    for c in corpora:
        h.update(f"{c['name']}\0{c['count']}\0{c['digest']}\0".encode())
    return {"root": h.hexdigest(), "corpora": len(corpora)}


# ---------------------------------------------------------------------------------------
# buyer: decrypt
# ---------------------------------------------------------------------------------------
@dataclass
class ScoreTable(CorpusRows):
    """Decrypted values. Per corpus: ``rows`` ranked by total value (``sum``); per example:
    ``values`` in store order with ``corpus`` labels."""

    release: str
    rows: list[dict[str, object]] = field(default_factory=list)
    values: np.ndarray | None = None
    corpus: list[str] | None = None
    commitment: dict[str, object] | None = None

    def __len__(self) -> int:
        return len(self.rows) if self.release == "corpus" else len(self.values if self.values is not None else [])

    def __str__(self) -> str:
        if self.release == "example":
            return f"ScoreTable(per-example, {0 if self.values is None else len(self.values)} values)"
        lines = [f"{'rank':>4}  {'corpus':<24}{'count':>8}{'distinct':>9}{'sum':>14}{'mean':>14}"]
        for rank, row in enumerate(self.rows, 1):
            head = f"{row['corpus']!s:<24}{row['count']:>8}{row.get('distinct', row['count']):>9}"
            if row["released"]:
                lines.append(f"{rank:>4}  {head}{row['sum']:>14.6g}{row['mean']:>14.6g}")
            else:
                lines.append(f"{'-':>4}  {head}{'withheld':>14}{'':>14}")
        return "\n".join(lines)


def decrypt_scores(result_msg: Message | bytes | str | os.PathLike[str], keys: BuyerKeys) -> ScoreTable:
    """Buyer side: decrypt a result into a ranked per-corpus table (or per-example values)."""
    result = read_message(result_msg, RESULT_KIND)
    header = result.header
    if header.get("context_hash") != keys.context_hash:
        raise MessageError(
            "These scores were encrypted under another buyer context: they need the keys that made "
            "the query (wrong keys)."
        )
    if header["query_id"] not in keys.query_exponents:
        raise MessageError(f"Query {header['query_id']} was not made with these keys (no record of it).")
    q_exp = keys.query_exponents[header["query_id"]]
    context = keys.public.context
    decryptor, encoder = seal.Decryptor(context, keys.secret_key), seal.CKKSEncoder(context)

    def slots(blob: bytes) -> np.ndarray:
        ct = S.load(seal.Ciphertext, context, blob)
        if not seal.is_valid_for(ct, context):
            raise MessageError("A result ciphertext is not valid for the buyer's context.")
        plain = seal.Plaintext()
        decryptor.decrypt(ct, plain)
        return np.asarray(encoder.decode_double(plain))

    if header["release"] == "example":
        parts, labels = [], []
        for blob, block in zip(result.blobs, header["blocks"], strict=True):
            parts.append(slots(blob)[: block["count"]] * 2.0 ** (block["exponent"] + q_exp))
            labels.extend(block["corpus"])
        values = np.concatenate(parts) if parts else np.zeros(0)
        return ScoreTable("example", values=values, corpus=labels, commitment=header["commitment"])
    decoded = [slots(blob) for blob in result.blobs]
    rows = []
    for c in header["corpora"]:
        row: dict[str, object] = {
            "corpus": c["name"],
            "count": c["count"],
            "distinct": c.get("distinct", c["count"]),
            "released": c["released"],
        }
        if c["released"]:
            values = decoded[c["ciphertext"]]
            row["sum"] = float(values[c["sum_slot"]] * 2.0 ** (header["exponents"]["sum"] + q_exp))
            row["mean"] = float(values[c["mean_slot"]] * 2.0 ** (header["exponents"]["mean"] + q_exp))
        rows.append(row)
    rows.sort(key=lambda r: (not r["released"], -float(r.get("sum", 0.0))))  # type: ignore[arg-type]
    return ScoreTable("corpus", rows=rows, commitment=header["commitment"])
