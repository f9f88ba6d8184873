"""Mock NIHAO suite: real tipsy/AHF files with one-zone chemical evolution (see ``suite``)."""

from .suite import PRESETS, SuiteSpec, draw_simulations, generate_suite, preset

__all__ = ["PRESETS", "SuiteSpec", "draw_simulations", "generate_suite", "preset"]
