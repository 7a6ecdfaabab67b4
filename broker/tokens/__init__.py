"""Cube tokens: minting and caching (:mod:`.issue`) and verifying the ones presented to
the proxy (:mod:`.verify`)."""
