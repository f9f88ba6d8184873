"""CASBI data product."""
