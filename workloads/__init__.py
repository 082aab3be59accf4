"""Sample asyncio workloads (the scenarios), each recording its own ground truth.

Each scenario is ``python -m workloads.<name>``; ``workloads.scenarios.SCENARIOS`` lists them and
``run_scenario`` runs one as a child an observer can attach to before it starts its work.
"""
