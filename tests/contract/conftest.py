from tests.support.backends import durable_harness, harness

__all__ = ["durable_harness", "harness"]
