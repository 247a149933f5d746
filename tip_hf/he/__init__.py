"""CKKS side of TIP: buyer keys, encrypted query, seller scoring, buyer decryption."""

from .keys import BuyerKeys, PublicContext
from .messages import Message, MessageError
from .params import PRESETS, CKKSParams
from .scoring import (
    EncryptedQuery,
    PolicyError,
    ReleasePolicy,
    ScoreTable,
    decrypt_scores,
    encrypt_query,
    score_encrypted,
    verify_commitment,
)

__all__ = [
    "PRESETS",
    "BuyerKeys",
    "CKKSParams",
    "EncryptedQuery",
    "Message",
    "MessageError",
    "PolicyError",
    "PublicContext",
    "ReleasePolicy",
    "ScoreTable",
    "decrypt_scores",
    "encrypt_query",
    "score_encrypted",
    "verify_commitment",
]
