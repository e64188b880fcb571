"""Unit layer: pure torch, CPU, seconds (the marker is registered in tests/pytest.ini)."""
