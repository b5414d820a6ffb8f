"""The daily digest's unsubscribe links: a signed user id, good without logging in.

The signature (SECRET_KEY, and SECRET_KEY_FALLBACKS after a rotation) is the
authority: whoever holds a user's link may turn that user's digest off, and
nothing else. Links do not expire, as an email may be read long after it came;
the salt keeps a signature made for another purpose from passing for one.
"""

from __future__ import annotations

from django.core import signing

SALT = "accounts.unsubscribe.digest"
# A dot rather than Signer's ":", which URL-quoting tools escape: the link stays as written.
SEPARATOR = "."
# A user id and a SHA-256 signature fit in far less; anything longer is not a link we made.
MAX_TOKEN_LENGTH = 100


def unsubscribe_token(user_id: int) -> str:
    return signing.Signer(salt=SALT, sep=SEPARATOR).sign(str(user_id))


def user_id_from_token(token: str) -> int | None:
    """The user whose link this is, or None for a link cut short, altered or made up."""
    if len(token) > MAX_TOKEN_LENGTH:
        return None
    try:
        value = signing.Signer(salt=SALT, sep=SEPARATOR).unsign(token)
    except signing.BadSignature:
        return None
    return int(value) if value.isascii() and value.isdigit() else None
