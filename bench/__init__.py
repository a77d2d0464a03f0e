"""
Side-by-side benchmarks: msrpc against the bare Twisted framed-echo limit,
Twisted AMP and grpcio, on one loopback workload.  See bench/README.md.
"""
