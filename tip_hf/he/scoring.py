"""Seller side: score a sketch store under the buyer's encrypted query.

``score_encrypted`` takes only public material from the buyer (its public context and
encrypted query) and the seller's own store and policy. Per corpus, the seller sums (clipped)
sketches in plaintext, adds DP noise once per corpus version when the policy asks for it
(:mod:`tip_hf.he.dp`), and releases one slot per corpus: ``<q, sum>`` (the buyer derives the
mean from the public count) for the ``local`` recipe, ``<q, c * sum>`` under the buyer's
declared fine-tuning recipe (``c`` from the corpus's own moments, :mod:`tip_hf.predictor`,
stated per corpus as ``scale``). Per example (if the policy allows), each example gets a slot.
The CKKS work, masking and flooding are in :mod:`tip_hf.he.kernel`.

The result commits to exactly the examples that were scored: per released corpus a salted
SHA-256 over the multiset of its example ids (the salt is the seller's until delivery:
:meth:`ScoredResult.opening_for`), nothing for withheld corpora.

The last ciphertext is the header check (:mod:`tip_hf.he.binding`): computed from the
buyer's check ciphertext and the finished header (value ciphertexts' SHA-256 included), it
lets the buyer detect any later edit of the header or swap of a ciphertext.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from .._version import __version__
from ..distributed import rank_and_world
from ..errors import SpecMismatchError, TIPError
from ..predictor import CorpusMoments, along_terms, corpus_scale, curvature_weights
from ..recipe import Recipe, RecipeError
from ..store import SketchStore
from ..values import clip_rows
from . import binding, dp
from .commitments import commitment_digest, commitment_root
from .kernel import QueryKernel
from .keys import BuyerKeys, PublicContext
from .messages import Message, MessageError, read_message
from .params import PACKED, QUERY_LAYOUTS
from .per_example import pow2_at_least, score_examples
from .policy import PolicyError, ReleasePolicy, SellerLedger
from .query import QUERY_KIND, EncryptedQuery, spec_binding

__all__ = ["RESULT_KIND", "ScoredResult", "score_encrypted", "commitment_digest"]  # commitment_digest: re-exported

RESULT_KIND = "tip_hf.scores"
logger = logging.getLogger(__name__)


@dataclass
class ScoredResult:
    """What ``score_encrypted`` returns. ``message`` goes to the buyer (:meth:`save`);
    ``opening`` (corpus -> salt) stays with the seller until delivery, when
    :meth:`opening_for` gives the buyer the salts of the corpora it bought, and the ids of
    their examples (``ids``: corpus -> hex ids, sorted), so the buyer can say which delivered
    rows are missing, extra or changed."""

    message: Message
    opening: dict[str, str]
    ids: dict[str, list[str]] = field(default_factory=dict)

    @property
    def header(self) -> dict[str, Any]:
        return self.message.header

    @property
    def blobs(self) -> list[bytes]:
        return self.message.blobs

    @property
    def dp(self) -> dict[str, Any] | None:
        """The DP statement of this release (epsilon, delta, clip, noise), or None."""
        return self.header.get("dp")

    def to_bytes(self) -> bytes:
        return self.message.to_bytes()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the result for the buyer (no salts in it)."""
        self.message.save(path)

    def opening_for(self, corpora: Iterable[str] | None = None) -> dict[str, Any]:
        """The delivery-time opening of these corpora's commitments (all if None)."""
        wanted = list(self.opening) if corpora is None else list(corpora)
        missing = [c for c in wanted if c not in self.opening]
        if missing:
            raise TIPError(f"No commitment to open for {missing}: released corpora are {sorted(self.opening)}.")
        opened: dict[str, Any] = {
            "format": "tip_hf.opening/1",
            "query_id": self.header["query_id"],
            "salts": {c: self.opening[c] for c in wanted},
        }
        if self.ids:
            opened["ids"] = {c: self.ids[c] for c in wanted if c in self.ids}
        return opened


def score_encrypted(
    query_msg: EncryptedQuery | Message | bytes | str | os.PathLike[str],
    store: SketchStore | str | os.PathLike[str],
    public_ctx: PublicContext | Message | bytes | str | os.PathLike[str],
    release: Literal["corpus", "example"] = "corpus",
    policy: ReleasePolicy | None = None,
    *,
    buyer: str | None = None,
    workers: int = 1,
    progress: bool = True,
) -> ScoredResult:
    """Seller side: the encrypted value of every corpus or, if the policy allows, of every
    example, under the buyer's key.

    Args:
        public_ctx: the buyer's *public* context (never its keys).
        policy: the seller's release policy; default :class:`ReleasePolicy` (restricts
            nothing). ``tip score`` defaults to :meth:`ReleasePolicy.conservative` (DP on).
        buyer: the name the seller gives this buyer; required with a ledger (budgets are
            keyed by it, never by anything the buyer sends).
        workers: processes for per-example blocks (SEAL is single-threaded).

    Raises:
        MessageError: the query or context is malformed, truncated or for another context.
        SpecMismatchError: the query was made for another spec/model than the store's.
        PolicyError: the release policy forbids the request, or the budget is spent.
    """
    policy = policy or ReleasePolicy()
    if isinstance(public_ctx, BuyerKeys):
        raise TypeError(
            "score_encrypted is the seller's step: pass the buyer's public context (keys.public or "
            "public_context.tip), never BuyerKeys."
        )
    query = read_message(query_msg.message if isinstance(query_msg, EncryptedQuery) else query_msg, QUERY_KIND)
    if query.header.get("layout") not in QUERY_LAYOUTS:  # before anything else: an old query needs a version message
        raise MessageError(
            f"The query uses layout {str(query.header.get('layout'))[:40]!r}; this seller scores "
            f"{' or '.join(QUERY_LAYOUTS)} (tip_hf {__version__}). The buyer must make a new query with this tip_hf "
            "release (tip query)."
        )
    try:
        recipe = Recipe.from_dict(query.header.get("recipe"))
    except (RecipeError, TypeError) as e:
        raise MessageError(f"The query's recipe is malformed ({e}); the buyer must make a new query.") from None
    public = public_ctx if isinstance(public_ctx, PublicContext) else PublicContext.load(public_ctx)
    store = store if isinstance(store, SketchStore) else SketchStore(store)
    if query.header.get("context_hash") != public.hash:
        raise MessageError(
            "The query was encrypted under a different public context than the one given. "
            "Use the buyer's public context that came with this query."
        )
    _check_binding(query.header, store)
    if query.header.get("proj_dim") != store.proj_dim:
        raise SpecMismatchError(
            "The sketch dimension",
            store.proj_dim,
            str(query.header.get("proj_dim"))[:40],
            "The query and the store must use the same proj_dim.",
        )
    if release not in ("corpus", "example"):
        raise ValueError(f"Invalid `release`: {release!r}. Must be 'corpus' or 'example'.")
    if release == "example" and not recipe.is_local:
        raise PolicyError(
            "Per-example values are first-order only; a fine-tuning recipe values corpora (release='corpus')."
        )
    if release == "example" and (not policy.allow_example_release or policy.dp):
        raise PolicyError(
            "The release policy does not allow per-example values (never under DP); use release='corpus'"
            " (tip score --release corpus)."
        )
    if not store.complete:
        raise TIPError(f"The store at '{store.path}' is incomplete; finish sketching (resume) before scoring.")
    _check_sketch_length(store, policy)
    ledger = _ledger(policy, buyer)
    kernel = QueryKernel(query, public, policy.flood_bits)
    kernel.check_precision()
    if kernel.layout == PACKED and not policy.dp and not policy.allow_packed_without_dp:
        raise PolicyError(
            "A packed query is scored only under DP: its rotations use the buyer's Galois keys on data-dependent "
            "ciphertexts, and forged keys read raw sketch coordinates. Ask the buyer for a column query (tip query "
            "--layout columns), keep DP on, or opt in with ReleasePolicy(allow_packed_without_dp=True) (tip score "
            "--allow-packed-without-dp)."
        )
    header: dict[str, Any] = {
        "query_id": query.header.get("query_id"),
        "context_hash": public.hash,
        "release": release,
        "layout": kernel.layout,
        "store_fingerprint": store.fingerprint,
        "policy": policy.public_summary(),
        "flood_std": kernel.flood_std,
        "recipe": recipe.to_dict(),
    }
    rank, world = rank_and_world()
    opened_ids: dict[str, list[str]] = {}
    if release == "example":
        if kernel.layout == PACKED and len(store) > kernel.params.slots:  # the seller trusts the keys (opt-in)
            logger.warning(
                "Scoring %d examples one by one under a packed query: ~5 ms each (%d rotations per block of as "
                "many examples). A column query (tip query --layout columns) needs no rotation: 4x (k=4096) to 100x "
                "(k=64) faster, at ~90 KB of query per pair of sketch coordinates.",
                len(store),
                kernel.params.slots,
            )
        blobs, opening = score_examples(kernel, store, policy, header, progress, workers, (query, public))
    elif rank == 0:  # one plaintext pass and k/2 products per block of corpora: the main process
        blobs, opening, opened_ids = _score_corpora(kernel, store, policy, header, recipe, progress)
    else:
        blobs, opening = [], {}
    if rank == 0:  # the header is complete: bind it, with the value ciphertexts' hashes, to the buyer's check
        header["blob_sha256"] = [hashlib.sha256(blob).hexdigest() for blob in blobs]
        blobs = [*blobs, _check_blob(kernel, header)]
    if world > 1:  # every rank returns the main process's answer (its salts, its blocks, its check)
        payload: list[object] = [(header, blobs, opening, opened_ids)]
        torch.distributed.broadcast_object_list(payload, src=0)
        header, blobs, opening, opened_ids = payload[0]  # type: ignore[misc]
    if ledger is not None and rank == 0:  # counted when the answer exists
        ledger.charge_query(buyer, policy.max_queries)  # type: ignore[arg-type]
    return ScoredResult(Message(RESULT_KIND, header, blobs), opening, opened_ids)


def _check_blob(kernel: QueryKernel, header: dict[str, Any]) -> bytes:
    """The header-check ciphertext (:mod:`tip_hf.he.binding`), last of the result's blobs: its
    slots decrypt to the buyer's secret pairs dotted with pairs derived from this header, as
    the buyer will read it (a JSON round trip), every field but ``check`` itself. Adds ``check``."""
    blob = kernel.release_check(binding.header_rows(json.loads(json.dumps(header))))
    header[binding.CHECK_FIELD] = {"slots": binding.CHECK_SLOTS, "sha256": hashlib.sha256(blob).hexdigest()}
    return blob


def _ledger(policy: ReleasePolicy, buyer: str | None) -> SellerLedger | None:
    if policy.ledger is None:
        return None
    if not buyer or not isinstance(buyer, str):
        raise PolicyError(
            "This policy keeps a ledger: name the buyer (score_encrypted(..., buyer='acme'), tip score --buyer "
            "acme). Budgets are keyed by the name the seller gives the buyer, not by its keys."
        )
    ledger = SellerLedger(policy.ledger)
    ledger.check_query(buyer, policy.max_queries)
    return ledger


def _check_binding(header: dict[str, Any], store: SketchStore) -> None:
    fingerprint = header.get("fingerprint")
    if fingerprint is not None and fingerprint != store.fingerprint:
        raise SpecMismatchError(
            "The spec/model fingerprint of the query",
            store.fingerprint,
            fingerprint,
            "The buyer's query was made for another model or spec than these sketches.",
        )
    settings = header.get("spec_settings")
    if settings is not None and settings != spec_binding(store.spec, None)["spec_settings"]:
        raise SpecMismatchError(
            "The spec of the query",
            store.spec.sketch_settings(),
            "(another spec)",
            "The buyer's query was made with other sketch settings than these sketches.",
        )


def _check_sketch_length(store: SketchStore, policy: ReleasePolicy) -> None:
    projection = store.manifest.get("projection")
    input_dim = projection.get("input_dim") if isinstance(projection, dict) else None
    if type(input_dim) is int and store.proj_dim >= input_dim and not policy.allow_exact_sketches:
        raise PolicyError(
            f"The buyer's spec sketches {input_dim} gradient coordinates into {store.proj_dim}: the sketch is the "
            "gradient itself, and a crafted model can then read corpus contents from it. Refusing; ask the buyer "
            "for proj_dim < D, or opt in with ReleasePolicy(allow_exact_sketches=True) (tip score "
            "--allow-exact-sketches)."
        )


def _score_corpora(
    kernel: QueryKernel,
    store: SketchStore,
    policy: ReleasePolicy,
    header: dict[str, Any],
    recipe: Recipe,
    progress: bool,
) -> tuple[list[bytes], dict[str, str], dict[str, list[str]]]:
    names = store.corpora
    version = path = None
    clip = policy.clip_norm
    if policy.dp:
        version, path = dp.prepare_version(store, policy, names)
        clip = version.clip_norm
    totals = torch.zeros(len(names), store.proj_dim, dtype=torch.float64)
    counts = np.zeros(len(names), dtype=np.int64)
    ids: list[list[bytes]] = [[] for _ in names]
    has_losses = True
    for shard in tqdm(store.shards(), total=len(store.manifest["shards"]), desc="aggregating", disable=not progress):
        codes = shard.corpus_codes.long()
        rows = clip_rows(shard.sketches.double(), clip)
        totals.index_add_(0, codes, rows)
        counts += np.bincount(codes.numpy(), minlength=len(names))
        has_losses &= shard.losses is not None
        for code, example_id in zip(codes.tolist(), shard.ids.numpy(), strict=True):
            ids[code].append(example_id.tobytes())
    # `min_examples` counts *distinct* examples: copies of one example must not carry it past
    # the threshold (its value would be released). Values stay additive, as influence is.
    distinct = np.array([len(set(mine)) for mine in ids], dtype=np.int64)
    released = distinct >= policy.min_examples

    def along_of(directions: np.ndarray) -> np.ndarray:
        """Second pass: sum_i w_i (s_i . u_c)^2 per corpus, each term <= clip^2."""
        out = np.zeros(len(names))
        for shard in tqdm(store.shards(), total=len(store.manifest["shards"]), desc="curvature", disable=not progress):
            codes = shard.corpus_codes.long().numpy()
            rows = clip_rows(shard.sketches.double(), clip).numpy()
            weights = curvature_weights(shard.losses, len(rows))
            projected = np.einsum("nk,nk->n", rows, directions[codes])
            np.add.at(out, codes, along_terms(projected, weights, clip))
        return out

    if version is not None and path is not None:
        noised = dp.noised_moments(
            store, policy, version, path, totals, along_of, [names[c] for c in np.flatnonzero(released)]
        )
        totals, along = noised.sums, noised.along
    elif recipe.is_local:
        along = np.zeros(len(names))
    else:
        along = along_of((totals / totals.norm(dim=1, keepdim=True).clamp(min=1e-300)).numpy())
    noise = None if version is None else (version.sigma, version.moment_sigma)
    scales = np.array(
        [
            corpus_scale(
                CorpusMoments(int(counts[c]), totals[c].numpy(), float(along[c])),
                recipe,
                store.gradient_dim,
                noise,
            )
            for c in range(len(names))
        ]
    )
    sums = totals.numpy() * scales[:, None]
    exponent = pow2_at_least(float(np.linalg.norm(sums[released], axis=1).max(initial=0.0)))
    order = [c for c in range(len(names)) if released[c]]
    blobs, corpora, opening, opened_ids = [], [], {}, {}
    slots = kernel.params.slots
    chunks = [order[lo : lo + slots] for lo in range(0, len(order), slots)] or [[]]
    for chunk, members in enumerate(tqdm(chunks, desc="scoring", disable=not progress)):
        blobs.append(kernel.release(sums[members] / 2.0**exponent if members else np.zeros((0, store.proj_dim))))
        for slot, c in enumerate(members):
            salt = secrets.token_bytes(32)
            opening[names[c]] = salt.hex()
            opened_ids[names[c]] = sorted(i.hex() for i in ids[c])
            corpora.append(
                {
                    "name": names[c],
                    "released": True,
                    "count": int(counts[c]),
                    "distinct": int(distinct[c]),
                    "scale": float(scales[c]),
                    "ciphertext": chunk,
                    "slot": slot,
                    "commitment": commitment_digest(salt, ids[c]),
                }
            )
    corpora += [{"name": names[c], "released": False} for c in range(len(names)) if not released[c]]
    header.update(
        corpora=corpora,
        exponent=exponent,
        clip_norm=clip,
        dp=None if version is None else version.public(),
        commitment=commitment_root(corpora),
        curvature="gauss-newton" if has_losses else "empirical-fisher (a store without losses)",
    )
    return blobs, opening, opened_ids
