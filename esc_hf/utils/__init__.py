"""Helpers every layer may use: atomic, locked file writes (`atomic_files`)."""
