"""
One client's session: the control connection, its commands, the backend conversation and the transfers.
"""
