"""perfkit: measure, validate and tune a GPU batch-embedding pipeline.

The measuring kit (this package) knows nothing about the workload; the pipeline
under test lives in `perfkit.workload`.
"""
__version__ = "0.1.0"
