"""The CKKS kernel: the only code that touches the buyer's ciphertexts. Small on purpose.

Both query layouts hold the complex pairs ``a_t = q[2t] - i q[2t+1]`` (``t < d = ceil(k/2)``)
at scale ``2^query_scale_bits``; the seller encodes, for row ``r`` of a block (corpus sums or
examples, at most N/2 rows), ``B[r, t] = (s_r[2t] + i s_r[2t+1]) / 2`` at scale
``2^plain_scale_bits``, so that ``Re sum_t a_t B[r, t] = <q, s_r> / 2``. No rescale.

* **columns** (``complex-pairs/3``): query ciphertext ``t`` holds ``a_t`` in every slot.
  ``acc = sum_t Enc(a_t) * B[:, t]``: d plaintext multiplications, slot ``r`` = row ``r``.
* **packed** (``packed/1``): ciphertext ``c`` holds ``a_{cn+u}`` in slot ``u`` (``n = N/2``).
  For a block of m rows, ``P = 2^ceil(log2 m)`` diagonals: ``X_j = sum_c Enc(a_c) * D_{c,j}``
  with ``D_{c,j}[u] = B[(u - j) mod P, cn + u]``, summed by Horner's rule with rotations by
  one slot, ``acc = X_0 + rot(X_1 + rot(X_2 + ...))``, then folded by rotations of P, 2P,
  ..., n/2 slots. Slot ``u`` then holds the *whole* row ``u mod P``: every coordinate of a row
  meets exactly one query slot, and no slot holds a partial sum. Only products are rotated
  (never the query), so the rotations' key-switch errors sit at the product scale.

Then, in both layouts, per block:

    acc += conj(acc)                       slot i: <q, s_i>, imaginary part 0
    acc += Encode(f_re + i f_im)           flooding, both parts, after the last key switch
    acc += Enc_pk(0)                       re-randomisation

The query's last ciphertext is the buyer's header check (:mod:`tip_hf.he.binding`): slot
``i`` holds a secret pair ``R_i`` in the same complex-pairs form. :meth:`QueryKernel.release_check`
multiplies it alone by the public pairs ``H_i`` derived from the finished result header, then
conjugates, floods and re-randomises exactly as above: slot ``i`` decrypts to ``<H_i, R_i>``.
The value blocks never touch it.

Flooding: every data-dependent error the buyer could decode (the seller's encoding rounding,
the key switches of the rotations and the conjugation, and the query's own noise, which the
buyer knows) is bounded by :func:`evaluation_error_bound` for a query of norm <= 1 per slot;
the flooding std is ``2^s`` times that bound, ``s`` the seller's ``flood_bits``. Nothing of
it is read from the buyer's messages. In a packed block of period P < n each row sits in n/P
slots: its flooding is one draw, the same in all of them (averaging the copies gains
nothing), plus an independent draw per slot, 2^s times what the rotations' key switches can
make the copies differ by. A query with out-of-range values can enlarge the rounding term
beyond the bound (the seller cannot see encrypted values); DP by input perturbation, on by
default, is the guarantee there: the rounding is then a function of already-noised sums.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable

import numpy as np
import tenseal.sealapi as seal

from .keys import PublicContext
from .messages import Message, MessageError
from .params import COLUMNS, PACKED, QUERY_LAYOUTS
from .seal import SealLoadError, to_bytes
from .seal import load as load_seal

__all__ = ["QueryKernel", "evaluation_error_bound"]

ERROR_STD = 3.2  # SEAL's default error standard deviation (noise_standard_deviation)


def evaluation_error_bound(
    poly_modulus_degree: int, query_scale_bits: int, plain_scale_bits: int, key_switches: int = 1
) -> float:
    """A 6-sigma bound (normalised value units) on one slot's evaluation error when
    ``|a| <= 1`` and ``|b| <= 1`` over the k/2 products: the query's fresh error
    (``sigma sqrt(N)`` per slot, times ``|b|``), the plaintext rounding (``sqrt(N/12)`` per
    slot, times ``|a|``), and ``key_switches`` key switches at the product scale (~``N`` each
    in absolute units; the conjugation, and in the packed layout the rotations)."""
    n = poly_modulus_degree
    query_error = 6 * ERROR_STD * math.sqrt(n) / 2.0**query_scale_bits
    rounding = 6 * math.sqrt(n / 12) / 2.0**plain_scale_bits
    return query_error + rounding + key_switches * key_switch_bound(n, query_scale_bits + plain_scale_bits)


def key_switch_bound(poly_modulus_degree: int, product_scale_bits: int) -> float:
    """A 6-sigma bound (normalised units) on one key switch's error in one slot."""
    return 6 * poly_modulus_degree / 2.0**product_scale_bits


class QueryKernel:
    """A checked query under a public context; turns plaintext blocks into released ciphertexts."""

    def __init__(self, query: Message, public: PublicContext, flood_bits: int) -> None:
        self.public, self.params = public, public.params
        context = public.context
        self.encoder, self.evaluator = seal.CKKSEncoder(context), seal.Evaluator(context)
        self.encryptor = seal.Encryptor(context, public.public_key)
        header = query.header
        self.layout = header.get("layout")
        if self.layout not in QUERY_LAYOUTS:
            raise MessageError(
                f"The query uses layout {str(self.layout)[:40]!r}; this seller scores {list(QUERY_LAYOUTS)}. "
                "The buyer must make a new query with this tip_hf release."
            )
        if self.layout == PACKED and not public.can_rotate:
            raise MessageError(
                "A packed query needs rotation keys, and this public context has none (keys made by an older "
                "tip_hf). The buyer must send its current public context, or make new keys (tip keygen)."
            )
        k = header.get("proj_dim")
        if type(k) is not int or not 0 < k <= 1 << 20:
            raise MessageError(f"The query's `proj_dim` must be a positive integer, got {k!r}.")
        self.k = k
        pairs = math.ceil(k / 2)
        expected = (pairs if self.layout == COLUMNS else math.ceil(pairs / self.params.slots)) + 1
        if len(query.blobs) != expected:
            raise MessageError(
                f"The query declares k={k} in layout {self.layout} and so {expected} ciphertexts ({expected - 1} "
                f"for the vector, 1 header check), but holds {len(query.blobs)}."
            )
        self.query_scale = 2.0**self.params.query_scale_bits
        self.plain_scale = 2.0**self.params.plain_scale_bits
        checked = [self._checked(context, blob, t) for t, blob in enumerate(query.blobs)]
        self.cts, self.check_ct = checked[:-1], checked[-1]
        n = self.params.slots
        # packed: <= n Horner rotations and <= n/P fold rotations reach a slot (each rotation's
        # error is summed over the n/P copies it lands in), plus the conjugation
        self.key_switches = 2 * n + 1 if self.layout == PACKED else 1
        poly, query_bits, plain_bits = (
            self.params.poly_modulus_degree,
            self.params.query_scale_bits,
            self.params.plain_scale_bits,
        )
        bound = evaluation_error_bound(poly, query_bits, plain_bits, self.key_switches)
        self.error_bound = bound
        self.flood_std = 2.0**flood_bits * bound
        # per-slot flooding of what key switches can make copies of one row differ by (times
        # the number of copies, so that no average over them stands out either)
        self.copy_flood_std = 2.0**flood_bits * self.key_switches * key_switch_bound(poly, query_bits + plain_bits)
        self.rng = np.random.default_rng(secrets.randbits(128))

    def check_precision(self) -> None:
        """Refuse parameters whose flooding would drown the values (std > 2^-16 of the range)."""
        if self.flood_std > 2.0**-16:
            raise MessageError(
                f"The buyer's CKKS parameters leave too little precision for the seller's flooding "
                f"(std {self.flood_std:.2g} of the value range); the buyer should use a tip_hf preset."
            )

    def _checked(self, context: seal.SEALContext, blob: bytes, t: int) -> seal.Ciphertext:
        try:
            ct = load_seal(seal.Ciphertext, context, blob)
        except SealLoadError as e:
            raise MessageError(f"Query ciphertext {t} does not load under the public context: {e}") from None
        problems = []
        if not seal.is_valid_for(ct, context):
            problems.append("not valid for the context")
        elif ct.size() != 2:
            problems.append(f"size {ct.size()} (a fresh ciphertext has 2)")
        elif ct.is_transparent():
            problems.append("transparent (no encryption: its second part is zero)")
        if ct.parms_id() != context.first_parms_id():
            problems.append("not at the top modulus level")
        if not ct.is_ntt_form():
            problems.append("not in NTT form")
        if ct.scale != self.query_scale:
            problems.append(f"scale {ct.scale!r} instead of 2^{self.params.query_scale_bits}")
        if problems:
            raise MessageError(f"Query ciphertext {t} is malformed ({'; '.join(problems)}); refusing to score it.")
        return ct

    def release(self, rows: np.ndarray) -> bytes:
        """``rows``: ``[m <= N/2, k]`` with every row's norm <= 1 (all-zero rows: not released).
        Slot ``i`` of the returned ciphertext decrypts to ``<q, rows[i]>`` + flooding; every
        other slot, and every imaginary part, to flooding alone."""
        slots = self.params.slots
        if rows.ndim != 2 or rows.shape[0] > slots or rows.shape[1] != self.k:
            raise ValueError(f"A block must be [<= {slots}, {self.k}], got {list(rows.shape)}.")
        if rows.shape[1] % 2:
            rows = np.pad(rows, ((0, 0), (0, 1)))
        pairs = (rows[:, 0::2] + 1j * rows[:, 1::2]) / 2
        if self.layout == COLUMNS:
            return self._finish(self._products(self.cts, np.ascontiguousarray(pairs.T)))
        period = 1 << max(0, len(rows) - 1).bit_length()  # rows per fold period: a power of two >= m
        return self._finish(self._packed_products(pairs, period), period)

    def release_check(self, rows: np.ndarray) -> bytes:
        """``rows``: ``[m <= N/2, 2]``, every row's norm <= 1 (the header's public pairs ``H``).
        Multiplies only the query's check ciphertext; slot ``i`` of the returned ciphertext
        decrypts to ``<R_i, rows[i]>`` + flooding (``R_i`` the buyer's secret pair), every
        other slot and every imaginary part to flooding alone."""
        if rows.ndim != 2 or rows.shape[0] > self.params.slots or rows.shape[1] != 2:
            raise ValueError(f"Check rows must be [<= {self.params.slots}, 2], got {list(rows.shape)}.")
        pairs = ((rows[:, 0] + 1j * rows[:, 1]) / 2)[None, :]
        return self._finish(self._products([self.check_ct], pairs))

    def _products(self, cts: list[seal.Ciphertext], pairs: np.ndarray) -> seal.Ciphertext:
        """``sum_t cts[t] * Encode(pairs[t])``, no rescale; an encryption of zero if every column is zero."""
        acc = self._add(None, cts, pairs)
        return self._zero() if acc is None else acc  # nothing released in this block: zero

    def _add(
        self, acc: seal.Ciphertext | None, cts: list[seal.Ciphertext], columns: Iterable[np.ndarray]
    ) -> seal.Ciphertext | None:
        """``acc + sum_t cts[t] * Encode(columns[t])``, skipping all-zero columns; None while nothing was added."""
        for ct, column in zip(cts, columns, strict=True):
            if not column.any():
                continue
            plain, product = seal.Plaintext(), seal.Ciphertext()
            self.encoder.encode(column.tolist(), ct.parms_id(), self.plain_scale, plain)
            self.evaluator.multiply_plain(ct, plain, product)
            if acc is None:
                acc = product
            else:
                self.evaluator.add_inplace(acc, product)
        return acc

    def _packed_products(self, pairs: np.ndarray, period: int) -> seal.Ciphertext:
        """Slot ``u`` of the result: ``sum_t a_t pairs[u mod period, t]``, for every ``u``
        (``pairs``: ``[m <= period, d]``; rows past m are zero). Horner over the ``period``
        diagonals, then a fold of ``n / period`` copies; rotations act on products only."""
        n, evaluator, keys = self.params.slots, self.evaluator, self.public.galois_keys
        slot = np.arange(n)
        acc: seal.Ciphertext | None = None
        for j in reversed(range(period)):
            if acc is not None:
                evaluator.rotate_vector_inplace(acc, 1, keys)
            rows = (slot - j) % period
            acc = self._add(acc, self.cts, (self._diagonal(pairs, rows, c * n + slot) for c in range(len(self.cts))))
        if acc is None:
            return self._zero()
        step = period
        while step < n:
            rotated = seal.Ciphertext()
            evaluator.rotate_vector(acc, step, keys, rotated)
            evaluator.add_inplace(acc, rotated)
            step *= 2
        return acc

    @staticmethod
    def _diagonal(pairs: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """``pairs[rows[u], cols[u]]`` per slot ``u``, zero where the row or column lies past ``pairs``."""
        inside = (rows < pairs.shape[0]) & (cols < pairs.shape[1])
        diagonal = np.zeros(len(rows), dtype=complex)
        diagonal[inside] = pairs[rows[inside], cols[inside]]
        return diagonal

    def _zero(self) -> seal.Ciphertext:
        """An encryption of zero at the product scale (a block with nothing to release)."""
        acc = seal.Ciphertext()
        self.encryptor.encrypt_zero(self.public.context.first_parms_id(), acc)
        acc.scale = self.query_scale * self.plain_scale
        return acc

    def _finish(self, acc: seal.Ciphertext, period: int | None = None) -> bytes:
        """Conjugate-add (real parts doubled, imaginary parts cancelled), flood both parts of
        every slot after that last key switch, re-randomise with a fresh ``Enc_pk(0)``.
        ``period``: the slots repeat with this period (a packed block): one flood draw per
        distinct slot, repeated, plus an independent per-slot draw for the copies' differences."""
        evaluator = self.evaluator
        conjugate = seal.Ciphertext()
        evaluator.complex_conjugate(acc, self.public.galois_keys, conjugate)
        evaluator.add_inplace(acc, conjugate)
        n = self.params.slots
        if period is None or period >= n:
            flood = self.rng.normal(0.0, self.flood_std, (2, n))
        else:
            copies = n // period
            flood = np.tile(self.rng.normal(0.0, self.flood_std, (2, period)), copies)
            flood += self.rng.normal(0.0, copies * self.copy_flood_std, (2, n))
        plain = seal.Plaintext()
        self.encoder.encode((flood[0] + 1j * flood[1]).tolist(), acc.parms_id(), acc.scale, plain)
        evaluator.add_plain_inplace(acc, plain)
        zero = seal.Ciphertext()
        self.encryptor.encrypt_zero(acc.parms_id(), zero)
        zero.scale = acc.scale
        evaluator.add_inplace(acc, zero)
        return to_bytes(acc)
