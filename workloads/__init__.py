"""Sample asyncio workloads (the scenarios), each recording its own ground truth."""
