"""rift-sweep: RiFT (Robust Critical Fine-Tuning, ICCV 2023) as a distributed hyperparameter sweep.

The layers, top to bottom (README "Development"; import-linter holds them): cli/run → orchestration → procedure
→ config → core → names.
"""

__version__ = "0.1.0"
