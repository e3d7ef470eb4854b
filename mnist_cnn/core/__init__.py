"""Shared plumbing: one-line user errors, atomic writes, checkpoint loading, and the private APIs we depend on."""
