"""Numerical kernels: pure functions over arrays, jitted and chunked under a memory budget.

Nothing here reads a config or names a config field; the methods layer maps config fields to the
keyword arguments of these functions and checks them first.
"""
