"""Buyer side: decrypt the seller's result, and check a delivery against it.

Checks after purchase are binding in two ways: the delivered examples' ids must open the
salted commitment (:func:`verify_commitment`), and the values the buyer recomputes from the
delivered data with its own model, spec and query must equal what it decrypted, within the
stated release noise (:func:`verify_values`). A seller who scored valuable sketches under
junk ids, or other text under the right ids, fails one of the two.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tenseal.sealapi as seal

from ..errors import VerificationError
from ..values import CorpusRows
from . import binding
from . import seal as S
from .keys import BuyerKeys, KeyFileError
from .messages import Message, MessageError, read_message
from .scoring import RESULT_KIND, ScoredResult, commitment_digest

__all__ = [
    "ScoreTable",
    "VerificationError",
    "decrypt_scores",
    "delivery_diff",
    "verify_commitment",
    "verify_values",
]

NOISE_Z = 6.0  # a recomputed value may differ from the decrypted one by this many noise stds


@dataclass
class ScoreTable(CorpusRows):
    """Decrypted values. Per corpus: ``rows`` ranked by total value (``sum``), each with
    ``noise_std`` (an upper bound on the std of the release noise, DP and flooding, in the
    buyer's units); per example: ``values`` in store order with ``corpus_labels``."""

    release: str
    rows: list[dict[str, object]] = field(default_factory=list)
    values: np.ndarray | None = None
    corpus_labels: list[str] | None = None
    commitment: dict[str, object] | None = None
    dp: dict[str, Any] | None = None
    query_id: str | None = None
    clip_norm: float | None = None
    recipe: dict[str, Any] | None = None  # the fine-tuning recipe the values predict (None: local)

    @property
    def corpus(self) -> list[str] | None:
        """Deprecated: :attr:`corpus_labels`."""
        warnings.warn("ScoreTable.corpus is now ScoreTable.corpus_labels", DeprecationWarning, stacklevel=2)
        return self.corpus_labels

    def __len__(self) -> int:
        return len(self.rows) if self.release == "corpus" else len(self.values if self.values is not None else [])

    def __str__(self) -> str:
        if self.release == "example":
            return f"ScoreTable(per-example, {0 if self.values is None else len(self.values)} values)"
        lines = [f"{'rank':>4}  {'corpus':<24}{'count':>8}{'distinct':>9}{'sum':>14}{'mean':>14}{'+/-':>11}"]
        for rank, row in enumerate(self.rows, 1):
            if row["released"]:
                head = f"{row['corpus']!s:<24}{row['count']:>8}{row['distinct']:>9}"
                lines.append(f"{rank:>4}  {head}{row['sum']:>14.6g}{row['mean']:>14.6g}{row['noise_std']:>11.2g}")
            else:
                lines.append(f"{'-':>4}  {row['corpus']!s:<24}{'':>8}{'':>9}{'withheld':>14}")
        if self.recipe and self.recipe.get("learning_rate") is not None:
            from ..recipe import Recipe

            lines.append(f"values predict the eval-loss drop of fine-tuning with: {Recipe.from_dict(self.recipe).name}")
        if self.dp:
            lines.append(
                f"differential privacy: epsilon {self.dp['epsilon']:.3g}, delta {self.dp['delta']:.1g} per example "
                f"(clip {self.dp['clip_norm']:.3g}, noise std {self.dp['sigma']:.3g} per sketch coordinate)"
            )
        return "\n".join(lines)


def _result(source: ScoredResult | Message | bytes | str | os.PathLike[str]) -> Message:
    return read_message(source.message if isinstance(source, ScoredResult) else source, RESULT_KIND)


def decrypt_scores(result_msg: ScoredResult | Message | bytes | str | os.PathLike[str], keys: BuyerKeys) -> ScoreTable:
    """Buyer side: decrypt a result into a ranked per-corpus table (or per-example values).

    Before reading any value, the header check (:mod:`tip_hf.he.binding`) must hold: the last
    ciphertext decrypts, in every check slot, to the query's secret values combined with
    values derived from the header exactly as received. An edited header field (exponent,
    count, name, DP statement, flooding std, commitment, ...) or a swapped value ciphertext
    raises :class:`MessageError`. Results of a query made by a tip_hf before the check (its
    ``queries.json`` record holds no check) are refused: they cannot be told from edited ones.
    """
    result = _result(result_msg)
    header = result.header
    if header.get("context_hash") != keys.context_hash:
        raise MessageError(
            "These scores were encrypted under another buyer context: they need the keys that made "
            "the query (wrong keys)."
        )
    query_id = header.get("query_id")
    if not isinstance(query_id, str) or query_id not in keys.query_exponents:
        raise MessageError(f"Query {str(query_id)[:40]!r} was not made with these keys (no record of it).")
    check_seed = keys.query_checks.get(query_id)
    if check_seed is None:
        raise MessageError(
            f"Query {query_id[:40]!r} was made by an older tip_hf, whose results carry no header check and so "
            "cannot be told from edited ones; make a new query with this release."
        )
    hashes = result.field("blob_sha256", list)
    check = result.field(binding.CHECK_FIELD, (dict, type(None)))
    if check is None or check.get("slots") != binding.CHECK_SLOTS or not isinstance(check.get("sha256"), str):
        raise MessageError(
            "The scores carry no valid header check (scored by an older tip_hf, or edited); ask the seller to "
            "score the query again with this tip_hf release."
        )
    if not result.blobs or [*hashes, check["sha256"]] != [hashlib.sha256(blob).hexdigest() for blob in result.blobs]:
        raise MessageError("The scores' ciphertexts do not match their header (swapped, dropped or edited).")
    values_blobs = result.blobs[:-1]
    q_exp = keys.query_exponents[query_id]
    flood = result.field("flood_std", float)
    context = keys.public.context
    decryptor, encoder = seal.Decryptor(context, keys.secret_key), seal.CKKSEncoder(context)

    def slots(blob: bytes) -> np.ndarray:
        try:
            ct = S.load(seal.Ciphertext, context, blob)
        except S.SealLoadError as e:
            raise MessageError(f"A result ciphertext does not load: {e}") from None
        if not seal.is_valid_for(ct, context) or ct.size() != 2:
            raise MessageError("A result ciphertext is not valid for the buyer's context.")
        if ct.scale != 2.0**keys.public.params.product_scale_bits:
            raise MessageError("A result ciphertext has another scale than scoring gives: it was edited.")
        plain = seal.Plaintext()
        decryptor.decrypt(ct, plain)
        return np.asarray(encoder.decode_double(plain))

    try:
        seed = bytes.fromhex(check_seed)
    except ValueError:
        seed = b""
    if len(seed) != binding.SEED_BYTES:
        raise KeyFileError(f"The keys' record of query {query_id[:40]!r} holds a damaged check seed.")
    try:
        expected = binding.expected_check(header, seed)
    except (TypeError, ValueError, RecursionError):  # a header built in memory that JSON cannot write
        raise MessageError("The scores header cannot be written as JSON, so it cannot be checked.") from None
    found = slots(result.blobs[-1])[: binding.CHECK_SLOTS]
    if not np.all(np.abs(found - expected) <= binding.check_tolerance(flood)):
        raise MessageError(
            "The scores header does not match its ciphertexts: it was edited after scoring (or the result is "
            "for another query). Ask the seller to send the file again."
        )
    release = header.get("release")
    if release == "example":
        parts, labels = [], []
        blocks = result.field("blocks", list)
        if len(blocks) != len(values_blobs):
            raise MessageError("The scores header lists another number of blocks than it holds value ciphertexts.")
        for blob, block in zip(values_blobs, blocks, strict=True):
            count, exponent = _block_fields(block)
            if count > keys.public.params.slots:
                raise MessageError("The scores header has a block of more examples than a ciphertext holds.")
            parts.append(slots(blob)[:count] * 2.0 ** (exponent + q_exp))
            corpus = block.get("corpus")
            if not isinstance(corpus, list) or len(corpus) != count:
                raise MessageError("The scores header has a block entry without one corpus label per example.")
            labels.extend(str(c) for c in corpus)
        values = np.concatenate(parts) if parts else np.zeros(0)
        return ScoreTable(
            "example", values=values, corpus_labels=labels, commitment=header.get("commitment"), query_id=query_id
        )
    if release != "corpus":
        raise MessageError(f"The scores declare an unknown release {release!r}.")
    exponent = result.field("exponent", int)
    if abs(exponent) > 1000:
        raise MessageError("The scores header's scale exponent is out of range; the file is damaged or forged.")
    dp = header.get("dp")
    sigma = float(dp["sigma"]) if isinstance(dp, dict) and isinstance(dp.get("sigma"), float) else 0.0
    decoded = [slots(blob) for blob in values_blobs]
    rows = []
    for c in result.field("corpora", list):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str):
            raise MessageError("The scores header has a malformed corpus entry.")
        row: dict[str, object] = {"corpus": c["name"], "released": bool(c.get("released"))}
        if row["released"]:
            count, cipher, slot = (c.get(k) for k in ("count", "ciphertext", "slot"))
            if not all(type(v) is int for v in (count, cipher, slot)) or not (
                count > 0 and 0 <= cipher < len(decoded) and 0 <= slot < len(decoded[cipher])  # type: ignore[operator]
            ):
                raise MessageError(f"The scores header's entry for corpus {c['name']!r} is malformed.")
            total = float(decoded[cipher][slot] * 2.0 ** (exponent + q_exp))  # type: ignore[index]
            scale = c.get("scale", 1.0)
            if not isinstance(scale, int | float) or not math.isfinite(scale) or scale <= 0:
                raise MessageError(f"The scores header's scale for corpus {c['name']!r} is malformed.")
            noise = math.hypot(scale * sigma * 2.0**q_exp, flood * 2.0 ** (exponent + q_exp))
            row.update(
                count=count,
                distinct=c.get("distinct", count),
                sum=total,
                mean=total / count,  # type: ignore[operator]
                scale=float(scale),
                noise_std=noise,
                commitment=c.get("commitment"),
            )
        rows.append(row)
    rows.sort(key=lambda r: (not r["released"], -float(r.get("sum", 0.0))))  # type: ignore[arg-type]
    clip = header.get("clip_norm")
    return ScoreTable(
        "corpus",
        rows=rows,
        commitment=header.get("commitment"),
        dp=dp if isinstance(dp, dict) else None,
        query_id=query_id,
        clip_norm=float(clip) if isinstance(clip, int | float) else None,
        recipe=header.get("recipe") if isinstance(header.get("recipe"), dict) else None,
    )


def _block_fields(block: object) -> tuple[int, int]:
    if not isinstance(block, dict) or type(block.get("count")) is not int or type(block.get("exponent")) is not int:
        raise MessageError("The scores header has a malformed block entry.")
    if not 0 < block["count"] <= 1 << 16 or abs(block["exponent"]) > 1000:
        raise MessageError("The scores header has a block entry out of range.")
    return block["count"], block["exponent"]


def verify_commitment(
    result_msg: ScoredResult | Message | bytes | str | os.PathLike[str],
    delivered: Mapping[str, Iterable[bytes | str]],
    opening: Mapping[str, Any],
) -> dict[str, bool]:
    """Buyer, after purchase: does each delivered corpus hold exactly the scored examples?

    Args:
        delivered: corpus name -> example ids of the delivered rows, any order
            (:func:`tip_hf.data.example_ids_by_corpus`: hashes of the raw text/features and
            label).
        opening: the seller's opening (``ScoredResult.opening_for([...])``, the
            ``tip score`` opening file): the salts of the bought corpora.

    Returns:
        ``{corpus: True/False}``.
    """
    header = _result(result_msg).header
    salts = opening.get("salts") if isinstance(opening, Mapping) else None
    if not isinstance(salts, Mapping):
        raise VerificationError("The opening holds no salts; it must be the seller's opening file for these scores.")
    if opening.get("query_id") != header.get("query_id"):
        raise VerificationError("The opening belongs to another result (its query id differs).")
    committed = {c.get("name"): c for c in header.get("corpora", []) if isinstance(c, dict) and c.get("released")}
    verdict = {}
    for name, ids in delivered.items():
        if name not in committed:
            raise VerificationError(f"Corpus {name!r} was not released in these scores; released: {sorted(committed)}.")
        if name not in salts:
            raise VerificationError(f"The opening has no salt for corpus {name!r}; ask the seller to open it.")
        try:
            salt = bytes.fromhex(str(salts[name]))
        except ValueError:
            raise VerificationError(f"The opening's salt for corpus {name!r} is not hex.") from None
        raw = [bytes.fromhex(i) if isinstance(i, str) else bytes(i) for i in ids]
        verdict[name] = commitment_digest(salt, raw) == committed[name].get("commitment")
    return verdict


def delivery_diff(
    result_msg: ScoredResult | Message | bytes | str | os.PathLike[str],
    delivered: Mapping[str, Iterable[bytes | str]],
    opening: Mapping[str, Any],
) -> dict[str, dict[str, list[int] | int]]:
    """Which delivered rows differ from what was scored, per corpus: ``missing`` (scored
    examples not delivered, a count), ``extra`` (positions, within the corpus's delivered
    rows, of rows that were not scored: extra or changed rows).

    Needs the example ids in the seller's opening (``tip open`` includes them); they are
    checked against the commitment first, so a seller cannot open to another list."""
    header = _result(result_msg).header
    listed = opening.get("ids") if isinstance(opening, Mapping) else None
    salts = opening.get("salts") if isinstance(opening, Mapping) else None
    if not isinstance(listed, Mapping) or not isinstance(salts, Mapping):
        raise VerificationError("The opening lists no example ids; ask the seller for an opening made by `tip open`.")
    committed = {c.get("name"): c for c in header.get("corpora", []) if isinstance(c, dict) and c.get("released")}
    out: dict[str, dict[str, list[int] | int]] = {}
    for name, ids in delivered.items():
        scored = listed.get(name)
        if name not in committed or not isinstance(scored, list) or name not in salts:
            raise VerificationError(f"The opening lists no ids for corpus {name!r}.")
        try:
            scored_ids = [bytes.fromhex(str(i)) for i in scored]
            salt = bytes.fromhex(str(salts[name]))
        except ValueError:
            raise VerificationError(f"The opening's ids or salt for corpus {name!r} are not hex.") from None
        if commitment_digest(salt, scored_ids) != committed[name].get("commitment"):
            raise VerificationError(
                f"The opening's id list for corpus {name!r} does not match the seller's commitment: it is not the "
                "list that was scored."
            )
        remaining = Counter(scored_ids)
        extra = []
        for position, raw in enumerate(bytes.fromhex(i) if isinstance(i, str) else bytes(i) for i in ids):
            if remaining[raw] > 0:
                remaining[raw] -= 1
            else:
                extra.append(position)
        out[name] = {"missing": sum(remaining.values()), "extra": extra}
    return out


def verify_values(
    table: ScoreTable,
    recomputed: Mapping[str, float],
    *,
    z: float = NOISE_Z,
    rtol: float = 1e-4,
    scales: Mapping[str, float] | None = None,
) -> dict[str, dict[str, float | bool]]:
    """Buyer, after purchase: do the values recomputed from the delivered data (its own model,
    spec, query and the result's ``clip_norm``) match the decrypted ones?

    A corpus passes when ``|decrypted - recomputed| <= z * noise_std + rtol * |recomputed|``
    (``rtol`` absorbs hardware differences in sketching). Returns per corpus the two values,
    the tolerance and ``ok``.

    Under a fine-tuning recipe the decrypted value is ``scale * <q, sum>`` with the seller's
    stated ``scale``; ``recomputed`` is still the first-order ``<q, sum>`` of the delivered
    data, compared with ``decrypted / scale``. ``scales`` (recomputed from the delivered data,
    :func:`tip_hf.values.plaintext_values` with the recipe) also checks the stated scale when
    there is no DP (under DP the scale comes from noised moments and is not checked)."""
    out: dict[str, dict[str, float | bool]] = {}
    for name, value in recomputed.items():
        try:
            row = table[name]
        except KeyError:
            raise VerificationError(f"Corpus {name!r} is not in the decrypted scores.") from None
        if not row["released"]:
            raise VerificationError(f"Corpus {name!r} was withheld: there is no value to compare with.")
        scale = float(row.get("scale", 1.0))  # type: ignore[arg-type]
        decrypted = float(row["sum"]) / scale  # type: ignore[arg-type]
        tolerance = z * float(row["noise_std"]) / scale + rtol * abs(value)  # type: ignore[arg-type]
        ok = abs(decrypted - value) <= tolerance
        if scales is not None and table.dp is None and name in scales:
            ok &= abs(scale - scales[name]) <= 1e-3 * abs(scales[name])
        out[name] = {
            "decrypted": decrypted,
            "recomputed": float(value),
            "tolerance": tolerance,
            "scale": scale,
            "ok": bool(ok),
        }
    return out
