"""
TLS contexts for the client and backend legs, and the development certificate authority.
"""
