"""Providers: who makes, delivers and checks a code (see base.py)."""
