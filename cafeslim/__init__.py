"""cafeslim: FLOPs-budgeted width search (CafeNet, ICLR 2021) for arbitrary vision models.

The package is laid out by pipeline stage::

    models ─► graph ─► flops ─► bins ─► supernet ─► search ─► export
                                                 data ─┘

See ``README.md`` for the command line and ``../shared/DESIGN.md`` for the invariants.
"""

__version__ = "0.1.0"
