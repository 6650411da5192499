"""actcurate engine: recipes, inputs and shard planning, the Ray executor, commits, storage and the CLI."""

__version__ = "0.1.0"
