"""
The proxy's settings: frozen values validated at the edge, and how the TOML file and the command line become them.
"""
