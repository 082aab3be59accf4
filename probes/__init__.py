"""The BPF C programs, shipped as package data (thread_observer.bpf)."""
