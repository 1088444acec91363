"""The causal chain in one place: capture (observers, attribution), episodes, links and the verdict.

variance discrepancy (C1) -> super neurons (C2) -> dimension disparity (C3) -> QK locking -> sink.

:func:`chain_observers` builds the streamed observers ``probe`` adds to its sweep when the chain is
on; :func:`reduce_chain` turns their (all-reduced) tallies into the ``variance``, ``super_neurons``,
``disparity``, ``qk_locking`` and ``chain`` sections of probe.json plus Parquet tables. The chain is
decided by exact attribution of the first token's residual stream (:mod:`.attribution`): the
episodes of each massive dim, their writers and erasers (:mod:`.episodes`).
"""

from .links import COLUMN_DIMS, MAX_CANDIDATES, reduce_disparity, selectivity_table
from .reduce import ChainResult, reduce_chain
from .sweep import chain_observers, check_criteria, extend_sweep

__all__ = ["COLUMN_DIMS", "MAX_CANDIDATES", "ChainResult", "chain_observers", "check_criteria", "extend_sweep",
           "reduce_chain", "reduce_disparity", "selectivity_table"]
