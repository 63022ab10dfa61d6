"""perfkit: measure, validate and tune a GPU batch-embedding pipeline.

The measuring kit (this package) knows nothing about the workload; the pipeline
under test lives in `perfkit.workload`.
"""

try:  # stamped by setuptools-scm when the package was built or installed
    from perfkit._version import __version__
except ImportError:  # a source tree nobody installed
    __version__ = "0.1.0+unstamped"
