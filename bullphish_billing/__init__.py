"""bullphish-billing: the BullPhish ID -> KaseyaOne daily usage billing feed."""

__version__ = "0.1.0"
