"""CKKS side of TIP, split by party.

- buyer: :mod:`.keys` (``BuyerKeys``), :mod:`.query` (``encrypt_query``), :mod:`.results`
  (``decrypt_scores``, ``verify_commitment``, ``verify_values``);
- seller: :mod:`.policy` (``ReleasePolicy``, ``SellerLedger``), :mod:`.dp` (noised corpus
  sums), :mod:`.scoring` (``score_encrypted``);
- the CKKS kernel both sides rely on: :mod:`.kernel` (the only code that touches the
  buyer's ciphertexts), :mod:`.params`, :mod:`.seal`, :mod:`.messages`, and :mod:`.binding`
  (the buyer-keyed check that binds a scores header to its ciphertexts).
"""

from .keys import BuyerKeys, KeyFileError, PublicContext
from .messages import Message, MessageError
from .params import PRESETS, CKKSParams, ParamsError
from .policy import DEFAULT_EPSILON, PolicyError, ReleasePolicy, SellerLedger
from .query import EncryptedQuery, encrypt_query
from .results import ScoreTable, VerificationError, decrypt_scores, delivery_diff, verify_commitment, verify_values
from .scoring import ScoredResult, score_encrypted

__all__ = [
    "DEFAULT_EPSILON",
    "PRESETS",
    "BuyerKeys",
    "CKKSParams",
    "EncryptedQuery",
    "KeyFileError",
    "Message",
    "MessageError",
    "ParamsError",
    "PolicyError",
    "PublicContext",
    "ReleasePolicy",
    "ScoreTable",
    "ScoredResult",
    "SellerLedger",
    "VerificationError",
    "decrypt_scores",
    "delivery_diff",
    "encrypt_query",
    "score_encrypted",
    "verify_commitment",
    "verify_values",
]
