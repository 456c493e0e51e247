"""Tests against the real stack (a package, so that the stack's fixture ends with it)."""
