"""The BPF C programs, shipped as package data (observer.bpf)."""
