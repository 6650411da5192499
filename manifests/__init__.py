"""Manifests: the Parquet schema, readers and writers, and the audit that reads them."""
