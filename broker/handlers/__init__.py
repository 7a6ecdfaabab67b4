"""HTTP handlers, thin: parse, call the domain classes, answer."""

#: Headers of answers that carry a secret (a key, a token, credentials): no cache keeps them.
NO_STORE = {"Cache-Control": "no-store"}
