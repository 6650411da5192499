"""Package data (installed as pipeline.prompts): read it through pipeline/resources.py."""
