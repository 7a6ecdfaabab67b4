"""Leaf utilities that know nothing of the broker's domain: secrets, addresses, time,
single flight, logging and metrics."""
