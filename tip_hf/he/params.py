"""CKKS parameter presets that meet 128-bit security, and the check that refuses weaker ones.

Maximum total coefficient-modulus bits for 128-bit classical security with a ternary secret
(HomomorphicEncryption.org security standard, Table 1, also what SEAL enforces):
N=1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881.

Scoring needs one plaintext-ciphertext multiplication: two data primes (the product at
scale 2^(2s) is rescaled by the second) plus the special prime for key switching (used by
the conjugation that kills the imaginary channel). After the rescale the result lives
modulo the first prime alone, which bounds decodable values by 2^(first - scale - 1).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_LOG_Q_128", "CKKSParams", "PRESETS", "get_preset"]

MAX_LOG_Q_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}


@dataclass(frozen=True)
class CKKSParams:
    """One CKKS parameter set.

    Attributes:
        poly_modulus_degree: ring dimension N; N/2 complex slots per ciphertext.
        coeff_mod_bit_sizes: prime sizes ``[first, ..., special]``.
        scale_bits: log2 of the encoding scale.
        flood_bits: log2 of the flooding noise std (value units) added to results, relative
            to the decodable range ``2^(first - scale_bits - 1)``; see :mod:`tip_hf.he.scoring`.
    """

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int
    flood_bits: int

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if n not in MAX_LOG_Q_128:
            raise ValueError(f"`poly_modulus_degree` must be one of {sorted(MAX_LOG_Q_128)}, got {n}.")
        total = sum(self.coeff_mod_bit_sizes)
        if total > MAX_LOG_Q_128[n]:
            raise ValueError(
                f"CKKS parameters N={n} with a {total}-bit coefficient modulus give less than 128-bit "
                f"security (the HE Standard allows at most {MAX_LOG_Q_128[n]} bits at N={n}). "
                f"Use a larger N or fewer/smaller primes; presets: {sorted(PRESETS)}."
            )
        if len(self.coeff_mod_bit_sizes) != 3:
            raise ValueError("Scoring needs exactly [first, second, special] primes: one multiplication deep.")
        first, second, _ = self.coeff_mod_bit_sizes
        if second != self.scale_bits or first <= self.scale_bits + 4:
            raise ValueError(
                f"`scale_bits` ({self.scale_bits}) must equal the second prime ({second}) and leave room "
                f"under the first prime ({first})."
            )

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def value_bound(self) -> float:
        """Largest |value| a result can hold without wrapping."""
        return 2.0 ** (self.coeff_mod_bit_sizes[0] - self.scale_bits - 1)

    def to_dict(self) -> dict[str, object]:
        return {
            "poly_modulus_degree": self.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes),
            "scale_bits": self.scale_bits,
            "flood_bits": self.flood_bits,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> CKKSParams:
        return cls(
            int(data["poly_modulus_degree"]),
            tuple(int(b) for b in data["coeff_mod_bit_sizes"]),  # type: ignore[arg-type, union-attr]
            int(data["scale_bits"]),
            int(data["flood_bits"]),
        )  # type: ignore[arg-type]


PRESETS: dict[str, CKKSParams] = {
    # 170 of 218 bits. Values up to 2^9 (sketches and query are normalised below 1).
    "n8192": CKKSParams(8192, (60, 55, 60), scale_bits=55, flood_bits=-30),
    # 180 of 438 bits: twice the slots per ciphertext, twice the work per ciphertext.
    "n16384": CKKSParams(16384, (60, 55, 60), scale_bits=55, flood_bits=-30),
}


def get_preset(name: str) -> CKKSParams:
    if name not in PRESETS:
        raise ValueError(f"Unknown CKKS preset {name!r}. Presets: {sorted(PRESETS)}.")
    return PRESETS[name]
