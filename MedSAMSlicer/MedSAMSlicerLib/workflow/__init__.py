"""Workflow layer: propagation and corrections, the simulated user, and the Qt-free MedSAMLogic with its jobs and observers."""
