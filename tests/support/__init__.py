"""Test support code shared by test modules (the simulated camera and its helpers)."""
