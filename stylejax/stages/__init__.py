"""Encoder stages, one module each (contract: README.md in this folder)."""
