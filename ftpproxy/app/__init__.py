"""
Application wiring: the proxy factory, the service that twistd and embedders start, the twistd options and the demo.
"""
