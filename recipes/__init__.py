"""Package data (installed as pipeline.recipes): read it through pipeline/resources.py."""
