"""Recipes for ``vitcompress pipeline`` (YAML), installed as ``vitcompress.recipes`` so the default ships with the package."""
