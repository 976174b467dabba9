"""The host agent: follows the store's change feed and enforces its host's ports."""
