"""Packed-dataset access: the HDF5 schema (hdf5.py), composition and few-shot selection (compose.py)."""
