"""The cell benchmark (`python -m pytest_vllmcompat.bench`): not a test. See __main__.py."""
