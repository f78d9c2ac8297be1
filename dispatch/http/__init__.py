"""HTTP layer: blueprints that translate requests into service calls and back."""
