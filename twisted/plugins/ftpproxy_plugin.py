"""
twistd plugin for ftpproxy: ``twistd -n ftpproxy --help``.

Kept tiny and lazy so that listing plugins never imports the proxy itself.
"""

from twisted.application.service import ServiceMaker

ftpproxy = ServiceMaker(
    "ftpproxy",
    "ftpproxy.app.tap",
    "FTP load balancer that terminates FTPS",
    "ftpproxy",
)
