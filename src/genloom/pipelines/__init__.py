"""Job types as pipelines of stages: the registry (public extension point) and the built-ins."""
