"""Test support shared by every defectloop test suite (a dev dependency, never a runtime one)."""
