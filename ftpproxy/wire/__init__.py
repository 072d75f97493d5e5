"""
The FTP and PROXY-protocol wire text: pure functions and small parsers, no I/O.

Everything above may use it; it uses nothing of the project.
"""
