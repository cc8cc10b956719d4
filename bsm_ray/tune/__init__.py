"""Annealing sweeps on Ray Tune: choose data-mix ratios and the CM-GEMS switch threshold."""
