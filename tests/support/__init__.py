"""
Helpers for the integration tests: real FTP backends, the proxy as a real
daemon, and real FTP clients (curl, lftp, ftplib).
"""
