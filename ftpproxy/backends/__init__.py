"""
Backends: the control connection to one, the balancing policies and pool, and health checks.
"""
