"""CKKS parameter presets that meet 128-bit security, and the check that refuses weaker ones.

Maximum total coefficient-modulus bits for 128-bit classical security with a ternary secret
(HomomorphicEncryption.org security standard, Table 1, also what SEAL enforces):
N=1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881.

Scoring is one plaintext-ciphertext multiplication and one conjugation (a key switch), with
**no rescale**: the product lives at scale ``2^(query_scale_bits + plain_scale_bits)`` over
all data primes. That spends the modulus on precision instead of levels, which is what
noise flooding needs: the seller adds noise ``2^s`` times larger than every data-dependent
evaluation error (``s`` = the seller's statistical security bits, :mod:`tip_hf.he.kernel`)
and the released value still keeps ~30 bits. The last prime is the special (key-switching)
prime.

These parameters are the buyer's (they come with its public context); nothing that protects
the seller is read from them: flooding and DP are the seller's policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ParamsError

__all__ = [
    "COLUMNS",
    "KEY_LAYOUTS",
    "KEYS_LAYOUT",
    "LAYOUT",
    "MAX_LOG_Q_128",
    "PACKED",
    "PRESETS",
    "QUERY_LAYOUTS",
    "CKKSParams",
    "ParamsError",
    "get_preset",
]

MAX_LOG_Q_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
# Query layouts (tip_hf.he.kernel), each followed by one header-check ciphertext
# (tip_hf.he.binding); no rescale, seller-owned flooding in both.
# PACKED: the k/2 complex pairs of q fill the slots of ceil(k/2 / (N/2)) ciphertexts (one up to
# k = N); the seller rotates its products (rotation keys in the public context). ~0.4 MB.
PACKED = "packed/1"
# COLUMNS: ceil(k/2) ciphertexts, pair t broadcast in every slot; no rotation, the fastest for
# per-example release over many candidates, but ~90 KB per coordinate pair.
COLUMNS = "complex-pairs/3"
QUERY_LAYOUTS = (PACKED, COLUMNS)
LAYOUT = PACKED  # the default
# Keys of this release: public key, conjugation key, and one rotation key per power of two
# below N/2 (what PACKED needs). Keys of the older layouts (no rotation keys) still load and
# serve COLUMNS queries; only their queries must be new (QueryKernel checks the query layout).
KEYS_LAYOUT = "rotations/1"
KEY_LAYOUTS = (KEYS_LAYOUT, COLUMNS, "complex-pairs/2")


@dataclass(frozen=True)
class CKKSParams:
    """One CKKS parameter set.

    Attributes:
        poly_modulus_degree: ring dimension N; N/2 complex slots per ciphertext.
        coeff_mod_bit_sizes: prime sizes ``[data primes..., special]``.
        query_scale_bits: log2 of the scale the buyer encodes its query at.
        plain_scale_bits: log2 of the scale the seller encodes its sketches at.
    """

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    query_scale_bits: int
    plain_scale_bits: int

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if n not in MAX_LOG_Q_128:
            raise ParamsError(f"`poly_modulus_degree` must be one of {sorted(MAX_LOG_Q_128)}, got {n}.")
        bits = self.coeff_mod_bit_sizes
        if len(bits) < 2 or any(not 20 <= b <= 60 for b in bits):
            raise ParamsError(f"`coeff_mod_bit_sizes` needs >= 2 primes of 20..60 bits, got {list(bits)}.")
        total = sum(bits)
        if total > MAX_LOG_Q_128[n]:
            raise ParamsError(
                f"CKKS parameters N={n} with a {total}-bit coefficient modulus give less than 128-bit "
                f"security (the HE Standard allows at most {MAX_LOG_Q_128[n]} bits at N={n}). "
                f"Use a larger N or fewer/smaller primes; presets: {sorted(PRESETS)}."
            )
        if min(self.query_scale_bits, self.plain_scale_bits) < 40:
            raise ParamsError("Both scales must be >= 2^40: flooding needs the precision.")
        if self.product_scale_bits + 4 > self.data_bits:
            raise ParamsError(
                f"The product scale 2^{self.product_scale_bits} needs a data modulus of more than "
                f"{self.product_scale_bits + 4} bits; these data primes give {self.data_bits}."
            )

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def data_bits(self) -> int:
        return sum(self.coeff_mod_bit_sizes[:-1])

    @property
    def product_scale_bits(self) -> int:
        return self.query_scale_bits + self.plain_scale_bits

    @property
    def value_bound(self) -> float:
        """Largest |value| a result slot can hold without wrapping (normalised units)."""
        return 2.0 ** (self.data_bits - self.product_scale_bits - 2)

    def to_dict(self) -> dict[str, Any]:
        return {
            "poly_modulus_degree": self.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes),
            "query_scale_bits": self.query_scale_bits,
            "plain_scale_bits": self.plain_scale_bits,
            "layout": KEYS_LAYOUT,
        }

    @classmethod
    def from_dict(cls, data: object) -> CKKSParams:
        """Parse the buyer's declared parameters; anything malformed is a ``ParamsError``."""
        if not isinstance(data, dict):
            raise ParamsError("The CKKS parameters must be a JSON object.")
        if data.get("layout") not in KEY_LAYOUTS:
            raise ParamsError(
                f"These CKKS parameters are for layout {data.get('layout', 'complex-pairs/1')!r}; this tip_hf "
                f"uses {KEYS_LAYOUT!r}. Make new keys with `tip keygen` (BuyerKeys.generate()) and a new query."
            )
        try:
            bits = data["coeff_mod_bit_sizes"]
            if not isinstance(bits, list) or not all(type(b) is int for b in bits):
                raise TypeError
            fields = [data[k] for k in ("poly_modulus_degree", "query_scale_bits", "plain_scale_bits")]
            if not all(type(v) is int for v in fields):
                raise TypeError
        except (KeyError, TypeError):
            raise ParamsError("The CKKS parameters lack or mistype a field.") from None
        return cls(fields[0], tuple(bits), fields[1], fields[2])


PRESETS: dict[str, CKKSParams] = {
    # 216 of 218 bits; product scale 2^152 over a 156-bit data modulus.
    "n8192": CKKSParams(8192, (52, 52, 52, 60), query_scale_bits=76, plain_scale_bits=76),
    # 228 of 438 bits: twice the slots per ciphertext, twice the work per ciphertext.
    "n16384": CKKSParams(16384, (56, 56, 56, 60), query_scale_bits=80, plain_scale_bits=80),
}


def get_preset(name: str) -> CKKSParams:
    if name not in PRESETS:
        raise ParamsError(f"Unknown CKKS preset {name!r}. Presets: {sorted(PRESETS)}.")
    return PRESETS[name]
