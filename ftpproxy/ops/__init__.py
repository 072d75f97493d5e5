"""
Operations: metrics, the admin HTTP endpoint, structured logs and the xferlog.
"""
