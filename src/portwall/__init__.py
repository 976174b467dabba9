"""portwall: Neutron-style tenant network security for Linux hosts."""

__version__ = "0.1.0"
