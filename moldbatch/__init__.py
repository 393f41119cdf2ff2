"""moldbatch: render films with the LTX-2 / LTX-2.3 audio+video models from spec files."""

__version__ = "0.1.0"
