"""The benchmark deployment of the MPC engine: one process per party on loopback.

Not part of the product: ``node`` (a party process running a sample program),
``programs`` (those programs and their dealer plans) and ``localmesh`` (key
and config files of a loopback mesh, process launcher). ``bench.mpc`` and the
process tests use them; the cluster services use the engine directly.
"""
