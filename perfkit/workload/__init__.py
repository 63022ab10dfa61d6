"""The pipeline under test: FASTA -> six-frame translation -> ESM-2 embeddings.

It knows nothing about notebooks; it reports through perfkit's telemetry.
"""
