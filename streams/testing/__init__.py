"""In-memory twins of our ports, for unit tests and the preview of a pipeline.
"""
