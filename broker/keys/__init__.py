"""Athena keys: their format and record, rights, validation of admin input, management,
the change-feed-kept cache, verification, per-key policies and usage counting."""
