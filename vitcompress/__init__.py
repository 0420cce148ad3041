"""vitcompress: fine-tune, prune, quantize, export and benchmark Vision Transformers.

Every stage is a function over an *artifact* directory (see :mod:`vitcompress.artifact`);
the ``vitcompress`` command line is a thin layer over these functions.
"""

__version__ = "0.1.0"
