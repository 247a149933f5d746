"""The CKKS kernel: the only code that touches the buyer's ciphertexts. Small on purpose.

Layout ("complex pairs", column-wise, no rotation): query ciphertext ``t`` holds
``a_t = q[2t] - i q[2t+1]`` in every slot at scale ``2^query_scale_bits``; for a block of up
to N/2 rows (corpus sums or examples) the seller encodes plaintext ``t`` with
``b_t = (s[:, 2t] + i s[:, 2t+1]) / 2`` at scale ``2^plain_scale_bits``. Then, per block,

    acc  = sum_t Enc(a_t) * b_t            k/2 plaintext multiplications, no rescale
    acc += conj(acc)                       slot i: <q, s_i>, imaginary part 0
    acc += Encode(f_re + i f_im)           flooding, both parts, after the last key switch
    acc += Enc_pk(0)                       re-randomisation

The query's last ciphertext is the buyer's header check (:mod:`tip_hf.he.binding`): slot
``i`` holds a secret pair ``R_i`` in the same complex-pairs form. :meth:`QueryKernel.release_check`
multiplies it alone by the public pairs ``H_i`` derived from the finished result header, then
conjugates, floods and re-randomises exactly as above: slot ``i`` decrypts to ``<H_i, R_i>``.
The value blocks never touch it.

Flooding: every data-dependent error the buyer could decode (the seller's encoding rounding,
the key switch of the conjugation, and the query's own noise, which the buyer knows) is
bounded by :func:`evaluation_error_bound` for a query of norm <= 1 per slot; the flooding
std is ``2^s`` times that bound, ``s`` the seller's ``flood_bits``. Nothing of it is read
from the buyer's messages. A query with out-of-range values can enlarge the rounding term
beyond the bound (the seller cannot see encrypted values); DP by input perturbation, on by
default, is the guarantee there: the rounding is then a function of already-noised sums.
"""

from __future__ import annotations

import math
import secrets

import numpy as np
import tenseal.sealapi as seal

from .keys import PublicContext
from .messages import Message, MessageError
from .params import LAYOUT
from .seal import SealLoadError, to_bytes
from .seal import load as load_seal

__all__ = ["QueryKernel", "evaluation_error_bound"]

ERROR_STD = 3.2  # SEAL's default error standard deviation (noise_standard_deviation)


def evaluation_error_bound(poly_modulus_degree: int, query_scale_bits: int, plain_scale_bits: int) -> float:
    """A 6-sigma bound (normalised value units) on one slot's evaluation error when
    ``|a| <= 1`` and ``|b| <= 1`` over the k/2 products: the query's fresh error
    (``sigma sqrt(N)`` per slot, times ``|b|``), the plaintext rounding (``sqrt(N/12)`` per
    slot, times ``|a|``), and the conjugation's key switch (~``N`` in absolute units)."""
    n = poly_modulus_degree
    query_error = 6 * ERROR_STD * math.sqrt(n) / 2.0**query_scale_bits
    rounding = 6 * math.sqrt(n / 12) / 2.0**plain_scale_bits
    key_switch = 6 * n / 2.0 ** (query_scale_bits + plain_scale_bits)
    return query_error + rounding + key_switch


class QueryKernel:
    """A checked query under a public context; turns plaintext blocks into released ciphertexts."""

    def __init__(self, query: Message, public: PublicContext, flood_bits: int) -> None:
        self.public, self.params = public, public.params
        context = public.context
        self.encoder, self.evaluator = seal.CKKSEncoder(context), seal.Evaluator(context)
        self.encryptor = seal.Encryptor(context, public.public_key)
        header = query.header
        if header.get("layout") != LAYOUT:
            raise MessageError(
                f"The query uses layout {str(header.get('layout'))[:40]!r}; this seller scores {LAYOUT!r}. "
                "The buyer must make a new query with this tip_hf release."
            )
        k = header.get("proj_dim")
        if type(k) is not int or not 0 < k <= 1 << 20:
            raise MessageError(f"The query's `proj_dim` must be a positive integer, got {k!r}.")
        self.k = k
        expected = math.ceil(k / 2) + 1
        if len(query.blobs) != expected:
            raise MessageError(
                f"The query declares k={k} and so {expected} ciphertexts ({expected - 1} for the vector, 1 header "
                f"check), but holds {len(query.blobs)}."
            )
        self.query_scale = 2.0**self.params.query_scale_bits
        self.plain_scale = 2.0**self.params.plain_scale_bits
        checked = [self._checked(context, blob, t) for t, blob in enumerate(query.blobs)]
        self.cts, self.check_ct = checked[:-1], checked[-1]
        bound = evaluation_error_bound(
            self.params.poly_modulus_degree, self.params.query_scale_bits, self.params.plain_scale_bits
        )
        self.error_bound = bound
        self.flood_std = 2.0**flood_bits * bound
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
        pairs = np.ascontiguousarray(((rows[:, 0::2] + 1j * rows[:, 1::2]) / 2).T)
        return self._finish(self._products(self.cts, pairs))

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
        evaluator = self.evaluator
        acc = None
        for ct, column in zip(cts, pairs, strict=True):
            if not column.any():
                continue
            plain, product = seal.Plaintext(), seal.Ciphertext()
            self.encoder.encode(column.tolist(), ct.parms_id(), self.plain_scale, plain)
            evaluator.multiply_plain(ct, plain, product)
            if acc is None:
                acc = product
            else:
                evaluator.add_inplace(acc, product)
        if acc is None:  # nothing released in this block: an encryption of zero
            acc = seal.Ciphertext()
            self.encryptor.encrypt_zero(self.public.context.first_parms_id(), acc)
            acc.scale = self.query_scale * self.plain_scale
        return acc

    def _finish(self, acc: seal.Ciphertext) -> bytes:
        """Conjugate-add (real parts doubled, imaginary parts cancelled), flood both parts of
        every slot after that last key switch, re-randomise with a fresh ``Enc_pk(0)``."""
        evaluator = self.evaluator
        conjugate = seal.Ciphertext()
        evaluator.complex_conjugate(acc, self.public.galois_keys, conjugate)
        evaluator.add_inplace(acc, conjugate)
        flood = self.rng.normal(0.0, self.flood_std, (2, self.params.slots))
        plain = seal.Plaintext()
        self.encoder.encode((flood[0] + 1j * flood[1]).tolist(), acc.parms_id(), acc.scale, plain)
        evaluator.add_plain_inplace(acc, plain)
        zero = seal.Ciphertext()
        self.encryptor.encrypt_zero(acc.parms_id(), zero)
        zero.scale = acc.scale
        evaluator.add_inplace(acc, zero)
        return to_bytes(acc)
