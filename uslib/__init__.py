"""uslib: the library behind the ultrasound foundation-model companion notebooks."""

__version__ = "0.1.0"
