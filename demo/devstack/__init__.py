"""A development deployment of the clusters: not part of the product.

:mod:`demo.devstack.deployment` writes the configs of N parties, their dealer(s)
and the output service with free ports, starts each as ``python -m cloud_tecc
<role>`` and stops them; :mod:`demo.devstack.shards` plays the gateways of a
sharded deployment. The demo, the benchmarks and the process tests use it.
It lives outside ``cloud_tecc`` so that it is not in the measured code bundle
of the services (:mod:`cloud_tecc.enclave.measurement`) and no product module
can import it (``tests/test_layering.py``).
"""
