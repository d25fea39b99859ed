"""covidnetx: scaling laws of transfer from large-scale pre-training to small chest X-ray targets."""
__version__ = "0.1.0"
