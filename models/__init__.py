"""The flexops model zoo: networks of the published methods, built on flexops layers."""
