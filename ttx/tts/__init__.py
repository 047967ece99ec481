"""Test-time scaling strategies on top of one engine interface."""
