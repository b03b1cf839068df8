"""Helpers every layer may use: atomic, locked file writes (`atomic_files`); a map over forked processes of one
thread each (`processes`)."""
