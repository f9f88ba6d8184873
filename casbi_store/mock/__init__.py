"""Mock NIHAO suite: real tipsy/AHF files with one-zone chemical evolution (see ``suite``)."""

from .chemical_evolution import Physics
from .suite import PRESETS, SuiteSpec, draw_simulations, generate_suite, preset

__all__ = ["PRESETS", "Physics", "SuiteSpec", "draw_simulations", "generate_suite", "preset"]
