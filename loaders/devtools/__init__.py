"""Development tools, not on the training path: synthetic data sets and a flaky object server.

synthetic.py       deterministic SSv2-like videos and ImageNet-like images (`omnimae-data synth`)
synthetic_draw.py  the synthetic classes and how their frames are drawn
objserver.py       a local HTTP object store with injected latency and faults
                   (`python -m loaders.devtools.objserver DIR --latency-ms 50`)
"""
