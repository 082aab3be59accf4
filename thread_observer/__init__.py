"""thread-observer: native threads and getaddrinfo of Python processes, watched with eBPF."""

__version__ = "0.1.0"
