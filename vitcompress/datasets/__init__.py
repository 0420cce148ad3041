"""Dataset sources. Each turns a spec into decoded ``ImageSet`` splits (see :mod:`vitcompress.data`)."""
