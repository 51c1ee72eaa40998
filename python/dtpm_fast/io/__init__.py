"""Files: model files (``model_files``, a leaf), streaming tables (``tables``), one atomic writer."""
