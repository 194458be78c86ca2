"""Tokens at rest: authenticated encryption (Fernet: AES-128-CBC + HMAC-SHA256).

CALSYNC_TOKEN_KEY holds one or more Fernet keys, comma-separated. The first encrypts; all of
them decrypt, so a key is rotated by putting the new key first, running
`calsync keys rotate` (which re-encrypts every stored token with it), then dropping the old.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from consumer.domain.errors import TokenKeyError


class TokenCipher:
    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise TokenKeyError(
                "CALSYNC_TOKEN_KEY is not set: generate a key with "
                "`calsync keys generate` and export it"
            )
        try:
            self._fernet = MultiFernet([Fernet(key.encode()) for key in keys])
        except ValueError:
            raise TokenKeyError(
                "CALSYNC_TOKEN_KEY is malformed: each comma-separated key must "
                "be 32 url-safe base64-encoded bytes (`calsync keys generate`)"
            ) from None
        self.keys = list(keys)

    @classmethod
    def from_keys(cls, raw: str) -> TokenCipher:
        """From CALSYNC_TOKEN_KEY's text: keys separated by commas, the first one first."""
        return cls([key.strip() for key in raw.split(",") if key.strip()])

    @staticmethod
    def generate_key() -> str:
        return Fernet.generate_key().decode()

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            raise TokenKeyError(
                "a stored token cannot be decrypted with CALSYNC_TOKEN_KEY "
                "(wrong key, or a key dropped before `calsync keys rotate`)"
            ) from None

    def rotate(self, ciphertext: str) -> str:
        """The same plaintext, encrypted under the first key."""
        try:
            return self._fernet.rotate(ciphertext.encode()).decode()
        except InvalidToken:
            raise TokenKeyError(
                "a stored token cannot be decrypted with any key of CALSYNC_TOKEN_KEY"
            ) from None
