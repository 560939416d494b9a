"""The modeltel collector: an OTLP receiver that turns ``ml.*`` events into model metrics."""
